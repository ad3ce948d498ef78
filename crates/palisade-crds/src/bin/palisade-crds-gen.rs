//! Writes the CRD manifests into `deploy/helm/palisade/crds/` (or the directory given).

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/palisade/crds")
        });
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in palisade_crds::crd_files() {
        std::fs::write(dir.join(&name), yaml)?;
        println!("{}", dir.join(name).display());
    }
    Ok(())
}
