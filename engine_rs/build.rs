//! Generates the wire types (`medsettle.v1`, prost) from `proto/medsettle/v1/*.proto`, the
//! contract the Python wire package is generated from too; protox compiles the files, so
//! the build needs no protoc. The compiled descriptors are kept too (`medsettle.fds`).

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("..")
        .join("proto");
    let dir = root.join("medsettle").join("v1");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    let descriptors = protox::compile(&files, [&root])?;
    // the descriptors themselves, for what reads messages by their type (signing.rs)
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("medsettle.fds");
    std::fs::write(out, prost::Message::encode_to_vec(&descriptors))?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
