//! Large objects' contents. Their metadata (oid, owner, privileges,
//! comment) come with the schema's pre-data section; this writes their
//! bytes, in one target transaction, and checks them afterwards against
//! the SHA-256 the source computed while reading.

use std::collections::BTreeMap;

use navette_proto::v1::CopyLargeObjectsRequest;
use navette_proto::v1::postgres_source_client::PostgresSourceClient;
use tokio_postgres::Client;
use tonic::transport::Channel;

use super::error::PostgresCopyError;
use super::tally::Tally;

/// Pieces read back when checking.
const PIECE: i32 = 1 << 20;

/// What was copied: each object's SHA-256 on the source, and the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub digests: BTreeMap<u32, Vec<u8>>,
    pub bytes: u64,
}

/// Copies every large object's contents.
pub async fn copy(
    source: &PostgresSourceClient<Channel>,
    request: CopyLargeObjectsRequest,
    target: &Client,
    target_server: &str,
    target_database: &str,
    tally: &Tally<'_>,
) -> Result<Copied, PostgresCopyError> {
    let source_failed = |status: tonic::Status| {
        PostgresCopyError::from_source(
            &request.server,
            &request.database,
            "reading large objects",
            &status,
        )
    };
    let target_failed = |what: String| {
        let server = target_server.to_owned();
        let database = target_database.to_owned();
        move |source| PostgresCopyError::Target {
            server,
            database,
            what,
            source,
        }
    };
    let mut stream = source
        .clone()
        .copy_large_objects(request.clone())
        .await
        .map_err(source_failed)?
        .into_inner();
    target
        .batch_execute("BEGIN")
        .await
        .map_err(target_failed("starting to write large objects".to_owned()))?;
    let ensure = target
        .prepare(
            "SELECT lo_create($1) WHERE NOT EXISTS \
             (SELECT FROM pg_largeobject_metadata WHERE oid = $1)",
        )
        .await
        .map_err(target_failed("preparing to write large objects".to_owned()))?;
    let put = target
        .prepare("SELECT lo_put($1, $2, $3)")
        .await
        .map_err(target_failed("preparing to write large objects".to_owned()))?;
    let mut copied = Copied::default();
    while let Some(chunk) = stream.message().await.map_err(source_failed)? {
        let what = || format!("writing large object {}", chunk.oid);
        if chunk.offset == 0 {
            // Created by the schema (with its owner); this is for safety.
            target
                .execute(&ensure, &[&chunk.oid])
                .await
                .map_err(target_failed(what()))?;
        }
        if !chunk.data.is_empty() {
            let offset = i64::try_from(chunk.offset).unwrap_or(i64::MAX);
            target
                .execute(&put, &[&chunk.oid, &offset, &chunk.data])
                .await
                .map_err(target_failed(what()))?;
        }
        let length = chunk.data.len() as u64;
        copied.bytes += length;
        tally.sent(length);
        tally.done(length);
        if chunk.last {
            copied.digests.insert(chunk.oid, chunk.sha256);
        }
    }
    target
        .batch_execute("COMMIT")
        .await
        .map_err(target_failed("committing large objects".to_owned()))?;
    Ok(copied)
}

/// Reads every large object back from the target and compares its SHA-256
/// with the source's; a sentence per difference.
pub async fn verify(
    target: &Client,
    copied: &Copied,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut problems = Vec::new();
    let on_target: Vec<u32> = target
        .query("SELECT oid FROM pg_largeobject_metadata ORDER BY oid", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for oid in &on_target {
        if !copied.digests.contains_key(oid) {
            problems.push(format!("large object {oid}: on the target only"));
        }
    }
    let piece = target.prepare("SELECT lo_get($1, $2, $3)").await?;
    for (oid, expected) in &copied.digests {
        if !on_target.contains(oid) {
            problems.push(format!("large object {oid}: missing on the target"));
            continue;
        }
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut offset: i64 = 0;
        loop {
            let data: Vec<u8> = target
                .query_one(&piece, &[oid, &offset, &PIECE])
                .await?
                .try_get(0)?;
            digest.update(&data);
            if data.len() < usize::try_from(PIECE).unwrap_or(usize::MAX) {
                break;
            }
            offset += i64::try_from(data.len()).unwrap_or(0);
        }
        if digest.finish().as_ref() != expected.as_slice() {
            problems.push(format!(
                "large object {oid}: its contents differ from the source's"
            ));
        }
    }
    Ok(problems)
}
