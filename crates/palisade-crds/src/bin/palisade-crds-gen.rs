//! Writes the CRD manifests into `deploy/helm/palisade/crds/` (or the directory given),
//! and the Calico CRDs' template into `deploy/helm/palisade/templates/` (or the second
//! directory given).

fn main() -> std::io::Result<()> {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/palisade");
    let mut args = std::env::args().skip(1).map(std::path::PathBuf::from);
    let dir = args.next().unwrap_or_else(|| chart.join("crds"));
    let templates = args.next().unwrap_or_else(|| chart.join("templates"));
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in palisade_crds::crd_files() {
        std::fs::write(dir.join(&name), yaml)?;
        println!("{}", dir.join(name).display());
    }
    let (name, yaml) = palisade_crds::calico::calico_crd_template();
    std::fs::create_dir_all(&templates)?;
    std::fs::write(templates.join(&name), yaml)?;
    println!("{}", templates.join(name).display());
    Ok(())
}
