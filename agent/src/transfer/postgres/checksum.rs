//! Row count and checksum of one table, computed the same way on the source
//! (in the copy's snapshot) and on the target (after the copy).
//!
//! Each row is rendered as text (`t::text`, the row's output function, with
//! the session settings every copy session shares, so 15 and 18 render
//! alike), hashed with MD5, and the two 64-bit halves of the hashes are
//! summed: an order-independent 128-bit digest, computed in one sequential
//! scan without sorting (a sorted `string_agg` of hashes would hold every
//! hash in memory and hit the 1 GB text limit on big tables). It detects
//! any changed, lost or duplicated row, though not a deliberate forgery
//! (not needed between two servers the agent controls).
//!
//! Cost: one sequential scan of the table on each side, plus a row-to-text
//! conversion and an MD5 per row: about 3 s per side for pgbench_accounts
//! at scale 50 (5 million rows, 640 MB) on the rig, where the copy itself
//! takes 4 s. That is why pulls check with row digests by default
//! (`DataCheck::RowDigest`, see `digest`) and this is the optional,
//! COPY-independent check (`DataCheck::Sql`).

use tokio_postgres::Client;

use super::session::qualified;

/// The query for `schema.table` (`ONLY`: an inheritance parent's own rows,
/// as COPY copies them).
pub fn query(schema: &str, table: &str) -> String {
    format!(
        "SELECT count(*), \
                coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::int8), 0)::text || ':' || \
                coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::int8), 0)::text \
         FROM (SELECT md5(t::text) AS h FROM ONLY {} AS t) AS hashed",
        qualified(schema, table)
    )
}

/// (rows, checksum) of one table.
pub async fn table_checksum(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<(u64, String), tokio_postgres::Error> {
    let row = client.query_one(&query(schema, table), &[]).await?;
    let rows: i64 = row.try_get(0)?;
    let checksum: String = row.try_get(1)?;
    Ok((u64::try_from(rows).unwrap_or(0), checksum))
}
