//! The model manifest (`models/variants.toml`, written by the models
//! pipeline or by `slimserve manifest init`), or the one inferred from a
//! single ONNX file (`serve --onnx`).
//!
//! Only a variant's `name` and `file` are required. What can be read or
//! computed from the ONNX file (`input`, `output`, `input_shape`,
//! `file_bytes`, `params`, `macs`, `sha256`) is computed at load, and checked
//! against the manifest where the manifest gives it (`macs`, which needs
//! the whole graph typed at the variant's side, by the engine as it builds
//! the variant's batch-1 plan: the graph is typed once per start). Accuracy (`top1`,
//! `top5`) cannot be computed: a variant without `top1` has unknown accuracy
//! and is routed to only when pinned or when it is the only one eligible.
//! Preprocessing is a top-level `[preprocess]` table that each variant may
//! override field by field (`[variant.preprocess]`); what neither gives
//! comes from the model's input shape (crop, layout) or the defaults below.

use crate::engine::inspect::{self, shape_text, Dim, ModelInfo};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// torchvision's ImageNet mean, in 0..255 units (RGB): the default, since
/// most exported classifiers were trained with it.
pub const DEFAULT_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// torchvision's ImageNet standard deviation, in 0..255 units (RGB).
pub const DEFAULT_STD: [f32; 3] = [58.395, 57.12, 57.375];
/// Default shorter side: the crop divided by 0.875 (256 for a 224 crop).
pub fn default_resize_shorter(crop: u32) -> u32 {
    ((f64::from(crop) / 0.875).round() as u32).max(crop)
}
/// Largest accepted crop and resize (a bound on per-request work).
pub const MAX_SIDE: u32 = 4096;

/// Memory order of the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub enum Layout {
    NCHW,
    NHWC,
}

/// Channel order of the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub enum Color {
    RGB,
    BGR,
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "NCHW" => Ok(Layout::NCHW),
            "NHWC" => Ok(Layout::NHWC),
            _ => Err(format!("'{s}' is not NCHW or NHWC")),
        }
    }
}

impl std::str::FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "RGB" => Ok(Color::RGB),
            "BGR" => Ok(Color::BGR),
            _ => Err(format!("'{s}' is not RGB or BGR")),
        }
    }
}

/// How an image becomes a variant's input tensor: shorter side resized to
/// `resize_shorter` (antialiased bilinear), centre crop `crop`×`crop`,
/// `(x - mean) / std` per channel (0..255 units, in the model's channel
/// order), laid out as `layout` in `color` order.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub resize_shorter: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: Layout,
    pub color: Color,
}

/// Preprocessing as a manifest or the command line gives it: any subset.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreprocessPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<[f32; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<[f32; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub color: Option<Color>,
}

impl PreprocessPatch {
    /// `self`'s fields, else `base`'s.
    pub fn over(&self, base: &PreprocessPatch) -> PreprocessPatch {
        PreprocessPatch {
            resize_shorter: self.resize_shorter.or(base.resize_shorter),
            crop: self.crop.or(base.crop),
            mean: self.mean.or(base.mean),
            std: self.std.or(base.std),
            layout: self.layout.or(base.layout),
            color: self.color.or(base.color),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == PreprocessPatch::default()
    }
}

/// A `[[variant]]` as written: only `name` and `file` are required.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VariantEntry {
    pub name: String,
    pub file: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_shape: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Side the model runs at when it differs from the crop: its graph
    /// resizes the preprocessed crop to `resize` × `resize` (bilinear), so a
    /// resolution rung shares its file and its preprocessing with others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize: Option<u32>,
    /// Why a variant stays although another is both faster and at least as
    /// accurate (smaller file, an integer engine's graph...): the router
    /// then never picks it for speed, only when pinned or alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_front: Option<String>,
    #[serde(default, skip_serializing_if = "PreprocessPatch::is_empty")]
    pub preprocess: PreprocessPatch,
}

/// A variant with everything known: given by the manifest or computed.
#[derive(Debug, Clone, Serialize)]
pub struct VariantSpec {
    pub name: String,
    pub file: String,
    pub description: String,
    pub input: String,
    pub output: String,
    /// `[-1, 3, crop, crop]` (NCHW) or `[-1, crop, crop, 3]` (NHWC); the
    /// batch dimension is `1` for a model exported with a fixed batch of 1.
    pub input_shape: Vec<i64>,
    /// Top-1 accuracy, `None` when unknown.
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub file_bytes: u64,
    pub params: u64,
    pub macs: u64,
    pub sha256: String,
    /// Side the model runs at, when its graph resizes the crop (see
    /// `VariantEntry::resize`).
    pub resize: Option<u32>,
    /// Off the accuracy/latency front, and why (see `VariantEntry::off_front`).
    pub off_front: Option<String>,
    pub preprocess: Preprocess,
}

impl VariantSpec {
    /// Elements of one preprocessed image.
    pub fn input_len(&self) -> usize {
        self.input_shape[1..].iter().map(|d| *d as usize).product()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    labels: Option<String>,
    #[serde(default)]
    preprocess: PreprocessPatch,
    #[serde(default)]
    variant: Vec<VariantEntry>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub dir: PathBuf,
    /// Class labels, one per model output; empty when no labels file was
    /// given (answers then name classes by index).
    pub labels: Vec<String>,
    pub labels_file: Option<PathBuf>,
    pub variants: Vec<VariantSpec>,
}

/// A manifest file, or a single ONNX model with its options.
#[derive(Debug, Clone)]
pub enum Source {
    Manifest(PathBuf),
    Onnx {
        model: PathBuf,
        labels: Option<PathBuf>,
        name: Option<String>,
        preprocess: PreprocessPatch,
    },
}

impl Manifest {
    /// Load `variants.toml` from a models folder (or the file itself).
    pub fn load(path: &Path) -> Result<Manifest> {
        let file = if path.is_dir() {
            path.join("variants.toml")
        } else {
            path.to_path_buf()
        };
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading manifest {}", file.display()))?;
        let raw: RawManifest = toml::from_str(&text)
            .map_err(|e| anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
        if raw.variant.is_empty() {
            bail!(
                "{}: the manifest lists no [[variant]] (each needs at least name and file)",
                file.display()
            );
        }
        let labels_file = raw.labels.as_ref().map(|l| dir.join(l));
        Manifest::resolve(dir, labels_file, &raw.preprocess, &raw.variant)
            .with_context(|| format!("manifest {}", file.display()))
    }

    /// The manifest the server infers for one ONNX model: `serve --onnx`.
    pub fn for_onnx(
        model: &Path,
        labels: Option<&Path>,
        name: Option<&str>,
        preprocess: &PreprocessPatch,
    ) -> Result<Manifest> {
        let entry = onnx_entry(model, name)?;
        let dir = model
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Manifest::resolve(
            dir,
            labels.map(Path::to_path_buf),
            preprocess,
            std::slice::from_ref(&entry),
        )
    }

    pub fn from_source(source: &Source) -> Result<Manifest> {
        match source {
            Source::Manifest(p) => Manifest::load(p),
            Source::Onnx {
                model,
                labels,
                name,
                preprocess,
            } => Manifest::for_onnx(model, labels.as_deref(), name.as_deref(), preprocess),
        }
    }

    fn resolve(
        dir: PathBuf,
        labels_file: Option<PathBuf>,
        top: &PreprocessPatch,
        entries: &[VariantEntry],
    ) -> Result<Manifest> {
        let labels = match &labels_file {
            Some(p) => read_labels(p)?,
            None => Vec::new(),
        };
        for (i, v) in entries.iter().enumerate() {
            check_name(&v.name)?;
            if entries[..i].iter().any(|o| o.name == v.name) {
                bail!("variant name '{}' appears twice", v.name);
            }
        }
        // Each distinct file is read, hashed and parsed once (the
        // resolution rungs share one), on its own thread; then each
        // variant is checked and its MACs counted at its side.
        let mut files: Vec<&str> = entries.iter().map(|e| e.file.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        let infos: Vec<Result<inspect::ModelInfo, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .iter()
                .map(|f| {
                    let path = dir.join(f);
                    s.spawn(move || inspect::inspect(&path).map_err(|e| format!("{e:#}")))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("reading a model panicked".into()))
                })
                .collect()
        });
        let info_of = |e: &VariantEntry| {
            let i = files.binary_search(&e.file.as_str()).ok()?;
            infos.get(i)
        };
        let resolved: Vec<Result<(VariantSpec, Option<i64>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = entries
                .iter()
                .map(|e| {
                    let dir = &dir;
                    let info = info_of(e);
                    s.spawn(move || match info {
                        Some(Ok(info)) => resolve_variant(dir, top, e, info),
                        Some(Err(err)) => Err(anyhow!("variant '{}': {err}", e.name)),
                        None => Err(anyhow!("variant '{}': its file was not read", e.name)),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("analysing a model panicked")))
                })
                .collect()
        });
        let mut variants = Vec::new();
        for r in resolved {
            let (spec, classes) = r?;
            if let (Some(k), Some(path)) = (classes, &labels_file) {
                if k as usize != labels.len() {
                    bail!(
                        "variant '{}': the model gives {k} scores per image but {} has {} labels",
                        spec.name,
                        path.display(),
                        labels.len()
                    );
                }
            }
            variants.push(spec);
        }
        Ok(Manifest {
            dir,
            labels,
            labels_file,
            variants,
        })
    }

    pub fn model_path(&self, v: &VariantSpec) -> PathBuf {
        self.dir.join(&v.file)
    }

    pub fn variant_names(&self) -> Vec<String> {
        self.variants.iter().map(|v| v.name.clone()).collect()
    }

    /// The labels to answer with for `classes` model outputs: the labels
    /// file's (which must have one per output), else the class indices.
    pub fn labels_for(&self, classes: usize) -> Result<Vec<String>> {
        match &self.labels_file {
            Some(p) if self.labels.len() != classes => bail!(
                "the models give {classes} scores per image but {} has {} labels",
                p.display(),
                self.labels.len()
            ),
            Some(_) => Ok(self.labels.clone()),
            None => Ok((0..classes).map(|i| i.to_string()).collect()),
        }
    }

    /// The manifest `slimserve manifest init` writes: every computed field,
    /// the preprocessing in a top-level table, accuracy left for the user.
    pub fn to_toml(&self, source: &str) -> Result<String> {
        let mut out = format!(
            "# Written by `slimserve manifest init` from {source}: what the server infers.\n\
             # Edit freely. input, output, input_shape, file_bytes, params, macs and sha256 are\n\
             # computed at load and may be deleted; where given they are checked against the file.\n\
             # Accuracy cannot be computed: without top1 the router only uses a variant when it is\n\
             # pinned (X-Variant) or the only one eligible.\n"
        );
        if let Some(l) = &self.labels_file {
            let rel = l.strip_prefix(&self.dir).unwrap_or(l);
            out += &toml::to_string(&LabelsLine {
                labels: rel.to_string_lossy().into_owned(),
            })?;
        }
        let first = self
            .variants
            .first()
            .map(|v| v.preprocess.clone())
            .context("no variant")?;
        out += "\n# mean and std are in 0..255 units, per channel of the model's input, in its color order.\n";
        out += "[preprocess]\n";
        out += &toml::to_string(&first)?;
        for v in &self.variants {
            let mut e = VariantEntry {
                name: v.name.clone(),
                file: v.file.clone(),
                description: v.description.clone(),
                input: Some(v.input.clone()),
                output: Some(v.output.clone()),
                input_shape: Some(v.input_shape.clone()),
                top1: v.top1,
                top5: v.top5,
                file_bytes: Some(v.file_bytes),
                params: Some(v.params),
                macs: Some(v.macs),
                sha256: Some(v.sha256.clone()),
                resize: v.resize,
                off_front: v.off_front.clone(),
                preprocess: PreprocessPatch::default(),
            };
            if v.preprocess != first {
                e.preprocess = patch_of(&v.preprocess);
            }
            out += "\n[[variant]]\n";
            let body = toml::to_string(&e)?;
            // Sub-tables must follow the plain keys: toml writes them so,
            // but under the variant's own header name.
            out += &body.replace("[preprocess]", "[variant.preprocess]");
            if v.top1.is_none() {
                out += "# top1 = 0.0   # measured top-1 accuracy (0..1): unknown\n";
                out += "# top5 = 0.0\n";
            }
        }
        Ok(out)
    }
}

#[derive(Serialize)]
struct LabelsLine {
    labels: String,
}

fn patch_of(p: &Preprocess) -> PreprocessPatch {
    PreprocessPatch {
        resize_shorter: Some(p.resize_shorter),
        crop: Some(p.crop),
        mean: Some(p.mean),
        std: Some(p.std),
        layout: Some(p.layout),
        color: Some(p.color),
    }
}

/// The `[[variant]]` entry for one ONNX file, named after it unless named.
pub fn onnx_entry(model: &Path, name: Option<&str>) -> Result<VariantEntry> {
    let file = model
        .file_name()
        .with_context(|| format!("--onnx {}: not a file path", model.display()))?
        .to_string_lossy()
        .into_owned();
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let stem = Path::new(&file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let clean: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let clean = clean.strip_suffix("_image").unwrap_or(&clean).to_string();
            if clean.is_empty() {
                "model".into()
            } else {
                clean
            }
        }
    };
    Ok(VariantEntry {
        name,
        file,
        ..VariantEntry::default()
    })
}

fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading labels {}", path.display()))?;
    let mut labels: Vec<String> = text.lines().map(|l| l.trim().to_owned()).collect();
    while labels.last().is_some_and(String::is_empty) {
        labels.pop();
    }
    if labels.is_empty() {
        bail!("labels {} is empty (one label per line)", path.display());
    }
    Ok(labels)
}

/// Names appear in URLs, headers and metric labels.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        bail!("variant name '{name}': use 1 to 64 letters, digits, '_', '-' or '.'");
    }
    if name == crate::kserve::model::ROUTED_MODEL
        || name.ends_with(crate::kserve::model::IMAGE_SUFFIX)
    {
        bail!(
            "variant name '{name}': '{}' and names ending in '{}' are the inference protocol's own",
            crate::kserve::model::ROUTED_MODEL,
            crate::kserve::model::IMAGE_SUFFIX
        );
    }
    Ok(())
}

/// Where a variant's input tensor comes from in its model.
fn pick_input<'a>(
    v: &VariantEntry,
    info: &'a ModelInfo,
    what: &str,
) -> Result<&'a inspect::Tensor> {
    let names = || {
        info.inputs
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let first = info
        .inputs
        .first()
        .with_context(|| format!("{what}: the model has no input"))?;
    if let Some(given) = &v.input {
        if !info.inputs.iter().any(|t| &t.name == given) {
            bail!(
                "{what}: input = \"{given}\" in the manifest, but the model's inputs are: {}",
                names()
            );
        }
        if given != &first.name {
            bail!("{what}: input \"{given}\" is not the model's first input; only single-input image classifiers are served");
        }
    } else if info.inputs.len() > 1 {
        bail!(
            "{what}: the model has {} inputs ({}); only single-input image classifiers are served",
            info.inputs.len(),
            names()
        );
    }
    if first.elem_type != inspect::FLOAT {
        bail!(
            "{what}: input '{}' has ONNX element type {}, expected float (1)",
            first.name,
            first.elem_type
        );
    }
    Ok(first)
}

fn pick_output<'a>(
    v: &VariantEntry,
    info: &'a ModelInfo,
    what: &str,
) -> Result<&'a inspect::Tensor> {
    let first = info
        .outputs
        .first()
        .with_context(|| format!("{what}: the model has no output"))?;
    if let Some(given) = &v.output {
        if !info.outputs.iter().any(|t| &t.name == given) {
            let names: Vec<&str> = info.outputs.iter().map(|t| t.name.as_str()).collect();
            bail!(
                "{what}: output = \"{given}\" in the manifest, but the model's outputs are: {}",
                names.join(", ")
            );
        }
        if given != &first.name {
            bail!("{what}: output \"{given}\" is not the model's first output, the one served");
        }
    }
    Ok(first)
}

/// The preprocessing and input shape of a variant, from the manifest's
/// tables and the model's declared input shape.
fn resolve_preprocess(
    shape: Option<&[Dim]>,
    patch: &PreprocessPatch,
    what: &str,
) -> Result<(Preprocess, Vec<i64>)> {
    let declared = shape.map(shape_text).unwrap_or_else(|| "no shape".into());
    let dims = match shape {
        Some(d) if d.len() == 4 => d,
        _ => bail!(
            "{what}: input shape {declared}: expected 4 dimensions (N,3,H,W or N,H,W,3) for an image classifier"
        ),
    };
    let f: Vec<Option<i64>> = dims.iter().map(Dim::fixed).collect();
    let detected = match (f[1], f[3]) {
        (Some(3), Some(3)) => None,
        (Some(3), _) => Some(Layout::NCHW),
        (_, Some(3)) => Some(Layout::NHWC),
        _ => None,
    };
    let layout = match (patch.layout, detected) {
        (Some(l), Some(d)) if l != d => bail!(
            "{what}: preprocess.layout = \"{l:?}\", but the model's input {declared} is {d:?}"
        ),
        (Some(l), _) | (None, Some(l)) => l,
        (None, None) => bail!(
            "{what}: cannot tell the layout of input {declared}: set preprocess.layout (--layout NCHW or NHWC)"
        ),
    };
    let (c, h, w) = match layout {
        Layout::NCHW => (f[1], f[2], f[3]),
        Layout::NHWC => (f[3], f[1], f[2]),
    };
    if c.is_some_and(|c| c != 3) {
        bail!("{what}: input {declared} has {} channels in {layout:?}; only 3-channel (RGB/BGR) inputs are served", c.unwrap_or(0));
    }
    let side = match (h, w) {
        (Some(h), Some(w)) if h != w => bail!(
            "{what}: input {declared} is {h}x{w}; only square inputs (a centre crop) are served"
        ),
        (Some(h), _) | (None, Some(h)) => Some(h),
        (None, None) => None,
    };
    let crop = match (patch.crop, side) {
        (Some(c), Some(s)) if i64::from(c) != s => bail!(
            "{what}: preprocess.crop = {c}, but the model's input {declared} is {s}x{s}"
        ),
        (Some(c), _) => c,
        (None, Some(s)) => u32::try_from(s).unwrap_or(0),
        (None, None) => bail!(
            "{what}: the input {declared} has symbolic height and width: set preprocess.crop (--crop)"
        ),
    };
    if crop == 0 || crop > MAX_SIDE {
        bail!("{what}: preprocess.crop = {crop}: expected 1..={MAX_SIDE}");
    }
    let resize_shorter = patch
        .resize_shorter
        .unwrap_or_else(|| default_resize_shorter(crop));
    if resize_shorter < crop || resize_shorter > MAX_SIDE {
        bail!("{what}: preprocess.resize_shorter = {resize_shorter}: expected crop ({crop}) ..= {MAX_SIDE}");
    }
    let mean = patch.mean.unwrap_or(DEFAULT_MEAN);
    let std = patch.std.unwrap_or(DEFAULT_STD);
    if mean.iter().any(|m| !m.is_finite()) {
        bail!("{what}: preprocess.mean = {mean:?}: expected finite numbers");
    }
    if std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        bail!("{what}: preprocess.std = {std:?}: expected positive numbers");
    }
    let batch = match f[0] {
        None => -1,
        Some(1) => 1,
        Some(n) => bail!(
            "{what}: input {declared} has a fixed batch of {n}; export the model with a batch of 1 or a symbolic batch"
        ),
    };
    let c = i64::from(crop);
    let input_shape = match layout {
        Layout::NCHW => vec![batch, 3, c, c],
        Layout::NHWC => vec![batch, c, c, 3],
    };
    let p = Preprocess {
        resize_shorter,
        crop,
        mean,
        std,
        layout,
        color: patch.color.unwrap_or(Color::RGB),
    };
    Ok((p, input_shape))
}

fn check_given<T: PartialEq + std::fmt::Display>(
    what: &str,
    field: &str,
    given: Option<&T>,
    computed: &T,
) -> Result<()> {
    match given {
        Some(g) if g != computed => {
            bail!("{what}: {field} = {g} in the manifest, but the model file has {computed}")
        }
        _ => Ok(()),
    }
}

/// Fill or check every computable field of one variant from its file's
/// `info`. Also returns the number of classes when the file declares it.
fn resolve_variant(
    dir: &Path,
    top: &PreprocessPatch,
    v: &VariantEntry,
    info: &inspect::ModelInfo,
) -> Result<(VariantSpec, Option<i64>)> {
    let path = dir.join(&v.file);
    let what = format!("variant '{}' ({})", v.name, path.display());
    if v.file.is_empty() {
        bail!("variant '{}': file is empty", v.name);
    }
    for (field, value) in [("top1", v.top1), ("top5", v.top5)] {
        if value.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
            bail!(
                "{what}: {field} = {}: expected a fraction in 0..=1",
                value.unwrap_or_default()
            );
        }
    }
    if let (Some(t1), Some(t5)) = (v.top1, v.top5) {
        if t1 > t5 {
            bail!("{what}: top1 = {t1} is above top5 = {t5}");
        }
    }
    check_given(&what, "file_bytes", v.file_bytes.as_ref(), &info.file_bytes)?;
    if let Some(s) = &v.sha256 {
        if !s.eq_ignore_ascii_case(&info.sha256) {
            bail!(
                "{what}: sha256 = \"{s}\" in the manifest, but the file's is {} (changed or wrong file?)",
                info.sha256
            );
        }
    }
    let input = pick_input(v, info, &what)?;
    let output = pick_output(v, info, &what)?;
    let patch = v.preprocess.over(top);
    let (preprocess, input_shape) = resolve_preprocess(input.shape.as_deref(), &patch, &what)?;
    if let Some(given) = &v.input_shape {
        let ok = given.len() == 4
            && given[1..] == input_shape[1..]
            && (given[0] == input_shape[0] || given[0] == -1);
        if !ok {
            bail!(
                "{what}: input_shape = {given:?} in the manifest, but the model's input {} with this preprocessing is {input_shape:?}",
                input.shape.as_deref().map(shape_text).unwrap_or_default()
            );
        }
    }
    let classes = output
        .shape
        .as_ref()
        .filter(|s| s.len() == 2)
        .and_then(|s| s[1].fixed());
    let fixed: Vec<usize> = std::iter::once(1)
        .chain(input_shape[1..].iter().map(|d| *d as usize))
        .collect();
    if let Some(to) = v.resize {
        if to == 0 || to > MAX_SIDE {
            bail!("{what}: resize = {to}: expected 1..={MAX_SIDE}");
        }
    }
    if v.off_front.as_deref().is_some_and(|r| r.trim().is_empty()) {
        bail!("{what}: off_front is empty: say why the variant stays off the front, or delete it");
    }
    check_given(&what, "params", v.params.as_ref(), &info.params)?;
    // Counting MACs means typing the whole graph at the variant's side. When
    // the manifest gives them, the engine checks them against the graph it
    // types anyway (`engine::tract::optimized_model`), once per start.
    let macs = match v.macs {
        Some(given) => given,
        None => {
            let rung;
            let proto = match v.resize {
                None => &info.proto,
                Some(to) => {
                    let mut p = info.proto.clone();
                    crate::engine::rescale::prepend_resize(
                        &mut p,
                        &input.name,
                        preprocess.layout == Layout::NCHW,
                        preprocess.crop,
                        to,
                    )
                    .with_context(|| format!("{what}: resize = {to}"))?;
                    rung = p;
                    &rung
                }
            };
            inspect::macs(proto, &fixed)
                .map_err(|e| anyhow!("{e:#}"))
                .with_context(|| {
                    format!(
                        "{what}: tract cannot analyse the model with input {fixed:?} (unsupported operator or shape?)"
                    )
                })?
        }
    };
    let spec = VariantSpec {
        name: v.name.clone(),
        file: v.file.clone(),
        description: v.description.clone(),
        input: input.name.clone(),
        output: output.name.clone(),
        input_shape,
        top1: v.top1,
        top5: v.top5,
        file_bytes: info.file_bytes,
        params: info.params,
        macs,
        sha256: info.sha256.clone(),
        resize: v.resize,
        off_front: v.off_front.clone(),
        preprocess,
    };
    Ok((spec, classes))
}

/// The repository's bundled models folder, for tests and defaults.
pub fn bundled_models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

#[cfg(test)]
mod tests;
