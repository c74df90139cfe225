//! Helpers shared by unit and integration tests (hidden from the docs).

/// A syntactically valid PNG whose header claims `width`×`height` pixels but
/// whose data is a few bytes: what a decompression bomb looks like to a
/// server that trusts the header.
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The service over the fake engine (no inference cost unless `fixed` is
/// set), with the bundled manifest's variants, labels and preprocessing:
/// for tests of the transports, the connection layer and worker faults.
pub fn fake_service(
    args: &crate::config::ServeArgs,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    fixed: std::time::Duration,
) -> anyhow::Result<(
    std::sync::Arc<crate::engine::fake::FakeEngine>,
    std::sync::Arc<crate::service::Service>,
)> {
    use crate::engine::fake::{FakeEngine, FakeVariant};
    let manifest = crate::manifest::Manifest::load(&args.model.models)?;
    let specs: Vec<_> = manifest
        .variants
        .iter()
        .filter(|v| args.model.variants.is_empty() || args.model.variants.contains(&v.name))
        .cloned()
        .collect();
    let mut engine = FakeEngine::new(
        specs
            .iter()
            .enumerate()
            .map(|(i, _)| FakeVariant {
                sizes: vec![1],
                fixed,
                per_image: std::time::Duration::ZERO,
                class: 281 + i,
            })
            .collect(),
    );
    engine.classes = manifest.labels.len();
    let engine = std::sync::Arc::new(engine);
    let svc = crate::server::assemble_service(args, &manifest, specs, engine.clone(), metrics)?;
    Ok((engine, svc))
}
