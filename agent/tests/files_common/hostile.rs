//! A hostile source: a `FileSource` that lists whatever manifest it is
//! given and serves "pwned" for every file, to show what the target does
//! with a crafted manifest. (A fake: the real source never lists such
//! entries, so a hostile one has to be made up.)

use std::path::Path;
use std::sync::Arc;

use navette_agent::transfer::files::{FilesError, FilesReport, PullConfig, pull_with};
use navette_agent::transfer::progress::Progress;
use navette_proto::v1::file_chunk::Piece;
use navette_proto::v1::file_source_server::{FileSource, FileSourceServer};
use navette_proto::v1::{
    DataBlock, EntryKind, FileChunk, ListTreeRequest, ReadFileRequest, ReadFilesRequest,
    TreeEntries, TreeEntry, WholeFile, WholeFiles,
};
use tonic::{Request, Response, Status};

use super::{Pki, TARGET_HOST, serve};

#[derive(Clone)]
struct Hostile {
    entries: Arc<Vec<TreeEntry>>,
}

type Stream<T> = tokio_stream::wrappers::ReceiverStream<Result<T, Status>>;

fn stream_of<T: Send + 'static>(items: Vec<T>) -> Stream<T> {
    let (sender, receiver) = tokio::sync::mpsc::channel(items.len().max(1));
    for item in items {
        let _ = sender.try_send(Ok(item));
    }
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// The content of every file the hostile source serves.
pub const PWNED: &[u8] = b"pwned\n";

fn pwned_sha256() -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, PWNED)
        .as_ref()
        .to_vec()
}

#[tonic::async_trait]
impl FileSource for Hostile {
    type ListTreeStream = Stream<TreeEntries>;
    type ReadFileStream = Stream<FileChunk>;
    type ReadFilesStream = Stream<WholeFiles>;

    async fn list_tree(
        &self,
        _request: Request<ListTreeRequest>,
    ) -> Result<Response<Self::ListTreeStream>, Status> {
        Ok(Response::new(stream_of(vec![TreeEntries {
            entries: self.entries.to_vec(),
        }])))
    }

    async fn read_file(
        &self,
        _request: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        Ok(Response::new(stream_of(vec![FileChunk {
            piece: Some(Piece::Data(DataBlock {
                offset: 0,
                data: PWNED.to_vec(),
                sha256: pwned_sha256(),
            })),
        }])))
    }

    async fn read_files(
        &self,
        request: Request<ReadFilesRequest>,
    ) -> Result<Response<Self::ReadFilesStream>, Status> {
        let files = (0..request.get_ref().paths.len())
            .map(|index| WholeFile {
                index: index as u32,
                data: PWNED.to_vec(),
                sha256: pwned_sha256(),
                size: PWNED.len() as u64,
                ..WholeFile::default()
            })
            .collect();
        Ok(Response::new(stream_of(vec![WholeFiles { files }])))
    }
}

/// A manifest entry owned by `root:root`, mode 0755.
pub fn entry(path: &[u8], kind: EntryKind) -> TreeEntry {
    TreeEntry {
        path: path.to_vec(),
        kind: kind.into(),
        mode: 0o755,
        owner: "root".to_owned(),
        group: "root".to_owned(),
        size: if kind == EntryKind::File {
            PWNED.len() as u64
        } else {
            0
        },
        ..TreeEntry::default()
    }
}

/// A manifest entry for a symbolic link to `target`.
pub fn symlink(path: &[u8], target: &Path) -> TreeEntry {
    TreeEntry {
        symlink_target: target.as_os_str().as_encoded_bytes().to_vec(),
        ..entry(path, EntryKind::Symlink)
    }
}

/// Pulls `entries`, as a hostile source lists them, into `target`.
pub async fn pull_from_hostile(
    pki: &Pki,
    config: PullConfig,
    entries: Vec<TreeEntry>,
    target: &Path,
    state: &Path,
) -> anyhow::Result<Result<FilesReport, FilesError>> {
    let hostile = Hostile {
        entries: Arc::new(entries),
    };
    let server = serve(
        pki,
        tonic::service::Routes::new(FileSourceServer::new(hostile)),
    )
    .await?;
    let channel = pki.channel_as(TARGET_HOST, server.address)?;
    Ok(pull_with(
        config,
        channel,
        "t-hostile",
        target,
        state,
        &Progress::new("t-hostile"),
    )
    .await)
}
