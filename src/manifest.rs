//! The model manifest (`models/variants.toml`) written by the models pipeline.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Preprocess {
    pub resize_shorter: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: String,
    pub color: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VariantSpec {
    pub name: String,
    pub file: String,
    #[serde(default)]
    pub description: String,
    pub input: String,
    pub output: String,
    pub input_shape: Vec<i64>,
    pub top1: f64,
    pub top5: f64,
    pub file_bytes: u64,
    pub params: u64,
    pub macs: u64,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
struct RawManifest {
    labels: String,
    preprocess: Preprocess,
    variant: Vec<VariantSpec>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub dir: PathBuf,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    pub variants: Vec<VariantSpec>,
}

impl Manifest {
    /// Load `variants.toml` from a models folder (or the file itself).
    pub fn load(path: &Path) -> Result<Manifest> {
        let file = if path.is_dir() {
            path.join("variants.toml")
        } else {
            path.to_path_buf()
        };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading manifest {}", file.display()))?;
        let raw: RawManifest =
            toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let labels_path = dir.join(&raw.labels);
        let labels: Vec<String> = std::fs::read_to_string(&labels_path)
            .with_context(|| format!("reading labels {}", labels_path.display()))?
            .lines()
            .map(str::to_owned)
            .collect();
        let m = Manifest {
            dir,
            labels,
            preprocess: raw.preprocess,
            variants: raw.variant,
        };
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        if self.variants.is_empty() {
            bail!("manifest lists no variant");
        }
        let p = &self.preprocess;
        if p.layout != "NCHW" || p.color != "RGB" || p.crop == 0 || p.resize_shorter < p.crop {
            bail!("unsupported preprocessing {p:?}: expected RGB NCHW with resize_shorter >= crop");
        }
        for (i, v) in self.variants.iter().enumerate() {
            if self.variants[..i].iter().any(|o| o.name == v.name) {
                bail!("variant name '{}' appears twice", v.name);
            }
            if v.input_shape.len() != 4 || v.input_shape[1..] != [3, p.crop as i64, p.crop as i64] {
                bail!(
                    "variant '{}': input_shape {:?} does not match the crop",
                    v.name,
                    v.input_shape
                );
            }
        }
        Ok(())
    }

    pub fn model_path(&self, v: &VariantSpec) -> PathBuf {
        self.dir.join(&v.file)
    }

    pub fn variant_names(&self) -> Vec<String> {
        self.variants.iter().map(|v| v.name.clone()).collect()
    }
}

/// The repository's bundled models folder, for tests and defaults.
pub fn bundled_models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_manifest_is_consistent() {
        let m = Manifest::load(&bundled_models_dir()).unwrap();
        assert_eq!(m.labels.len(), 1000);
        assert_eq!(m.variants[0].name, "full");
        for v in &m.variants {
            let meta = std::fs::metadata(m.model_path(v)).unwrap();
            assert_eq!(
                meta.len(),
                v.file_bytes,
                "{}: file size differs from the manifest",
                v.name
            );
            assert!(
                v.top1 > 0.5 && v.top1 <= v.top5,
                "{}: implausible accuracy",
                v.name
            );
        }
    }
}
