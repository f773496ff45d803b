//! Compiles `navette/v1/*.proto` with protox (no system `protoc`), generates
//! the tonic code, and writes the encoded descriptor set for server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "navette/v1/types.proto",
        "navette/v1/panel.proto",
        "navette/v1/operator.proto",
        "navette/v1/agent.proto",
        "navette/v1/transfer.proto",
        "navette/v1/files.proto",
        "navette/v1/postgres_copy.proto",
        "navette/v1/mariadb_copy.proto",
        "navette/v1/mariadb_replication.proto",
        "navette/v1/cutover.proto",
        "navette/v1/reinstall.proto",
        "navette/v1/transit.proto",
        "navette/v1/addresses.proto",
        "navette/v1/migrations.proto",
        "navette/v1/catchup.proto",
        "navette/v1/verify.proto",
        "navette/v1/retire.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("navette_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
