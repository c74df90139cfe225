//! The transport-independent request path: preprocess off the runtime (once
//! per distinct preprocessing among the variants the request may be routed
//! to), route and queue through the batcher, await the answer within the
//! deadline. HTTP `/classify` and the inference protocols all call this.

use crate::batching::{Batcher, Inputs, Outcome, Tensor};
use crate::engine::top_k;
use crate::error::ServeError;
use crate::manifest::{Preprocess, VariantSpec};
use crate::metrics::Metrics;
use crate::preprocess::{self, DecodeLimits};
use crate::recent::Recent;
use crate::routing::{self, RouteRequest};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A latency budget given in milliseconds (header, parameter, either
/// transport): positive, finite, at most an hour.
pub fn budget_from_ms(ms: f64) -> Option<Duration> {
    (ms.is_finite() && ms > 0.0 && ms <= 3.6e6).then(|| Duration::from_secs_f64(ms / 1e3))
}

/// Limits and defaults of the request path.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub decode: DecodeLimits,
    pub default_budget: Duration,
    pub max_budget: Duration,
    pub max_top_k: usize,
    /// Images decoded and resized at once (off the async runtime).
    pub preprocess_slots: usize,
    /// Batch sizes above 1 with a plan (empty when batching is off); the
    /// batcher forms them only where the profile shows they pay.
    pub batch_sizes: Vec<usize>,
    /// Longest a request waits for its batch to fill.
    pub max_batch_wait: Duration,
    /// Inference worker threads.
    pub workers: usize,
}

pub struct Service {
    pub specs: Vec<VariantSpec>,
    pub labels: Arc<Vec<String>>,
    /// The distinct preprocessings among the variants (one for the bundled
    /// models), and each variant's index in it.
    preps: Vec<Preprocess>,
    prep_of: Vec<usize>,
    pub batcher: Arc<Batcher>,
    pub metrics: Arc<Metrics>,
    pub config: ServiceConfig,
    /// Answers and refusals over the last minute (the live panel).
    pub recent: Mutex<Recent>,
    slots: Semaphore,
    /// Per variant: not chosen for speed (manifest `off_front`, or beaten
    /// on this machine), as the batcher routes.
    off_front: Vec<bool>,
    /// Per variant: the variant that beats it here (`routing::dominated`).
    pub dominated_by: Vec<Option<String>>,
}

/// Options common to every transport.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    pub variant: Option<String>,
    pub budget: Option<Duration>,
    pub min_top1: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    /// Class index (model output).
    pub index: usize,
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub queue_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub total_ms: f64,
}

/// The answer of `POST /classify`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Classification {
    /// The variant that answered.
    pub variant: String,
    /// Why it answered.
    #[schema(value_type = crate::routing::RouteReason)]
    pub route: &'static str,
    /// Size of the batch the image ran in.
    pub batch_size: usize,
    /// The latency budget applied, in milliseconds.
    pub budget_ms: f64,
    pub predictions: Vec<Prediction>,
    pub timings: Timings,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Service {
    pub fn new(
        specs: Vec<VariantSpec>,
        labels: Vec<String>,
        batcher: Arc<Batcher>,
        metrics: Arc<Metrics>,
        config: ServiceConfig,
    ) -> Service {
        let slots = Semaphore::new(config.preprocess_slots.max(1));
        let mut preps: Vec<Preprocess> = Vec::new();
        let prep_of = specs
            .iter()
            .map(|s| match preps.iter().position(|p| *p == s.preprocess) {
                Some(i) => i,
                None => {
                    preps.push(s.preprocess.clone());
                    preps.len() - 1
                }
            })
            .collect();
        let recent = Mutex::new(Recent::new(specs.len(), Instant::now()));
        let off_front = specs.iter().map(|s| s.off_front.is_some()).collect();
        let dominated_by = vec![None; specs.len()];
        Service {
            specs,
            labels: Arc::new(labels),
            preps,
            prep_of,
            batcher,
            metrics,
            config,
            recent,
            slots,
            off_front,
            dominated_by,
        }
    }

    /// The front measured at warm-up: which variants are not chosen for
    /// speed, and which variant beats each (see `routing::dominated`).
    pub fn set_front(&mut self, off_front: Vec<bool>, dominated_by: Vec<Option<String>>) {
        assert_eq!(off_front.len(), self.specs.len());
        assert_eq!(dominated_by.len(), self.specs.len());
        self.off_front = off_front;
        self.dominated_by = dominated_by;
    }

    /// Top-1 accuracy of each variant (`None`: unknown), in manifest order.
    pub fn top1(&self) -> Vec<Option<f64>> {
        self.specs.iter().map(|s| s.top1).collect()
    }

    /// The distinct preprocessings a request may need: for each variant it
    /// may be routed to, the index (in the returned list) of its tensor.
    fn preps_for(&self, route: &RouteRequest) -> (Vec<Preprocess>, Vec<Option<usize>>) {
        let mut cands = routing::candidates(&self.top1(), &self.off_front, route);
        if cands.is_empty() {
            // Routing will refuse it; preprocess as for every variant.
            cands = (0..self.specs.len()).collect();
        }
        let mut chosen: Vec<usize> = Vec::new(); // indices into self.preps
        let mut slot = vec![None; self.specs.len()];
        for v in cands {
            let p = self.prep_of[v];
            let i = match chosen.iter().position(|c| *c == p) {
                Some(i) => i,
                None => {
                    chosen.push(p);
                    chosen.len() - 1
                }
            };
            slot[v] = Some(i);
        }
        let preps = chosen.iter().map(|p| self.preps[*p].clone()).collect();
        (preps, slot)
    }

    pub fn variant_index(&self, name: &str) -> Result<usize, ServeError> {
        self.specs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ServeError::UnknownVariant {
                name: name.to_string(),
                valid: self.specs.iter().map(|s| s.name.clone()).collect(),
            })
    }

    /// Check options and turn them into a route request and a budget.
    pub fn resolve(&self, opts: &RequestOptions) -> Result<(RouteRequest, Duration), ServeError> {
        let pinned = opts
            .variant
            .as_deref()
            .map(|n| self.variant_index(n))
            .transpose()?;
        let budget = opts.budget.unwrap_or(self.config.default_budget);
        if budget.is_zero() || budget > self.config.max_budget {
            return Err(ServeError::BadHeader {
                name: "x-sla-ms",
                reason: format!(
                    "budget must be in 1..={} ms",
                    self.config.max_budget.as_millis()
                ),
            });
        }
        if let Some(m) = opts.min_top1 {
            if !(0.0..=1.0).contains(&m) {
                return Err(ServeError::BadHeader {
                    name: "x-min-accuracy",
                    reason: "must be in 0..=1".into(),
                });
            }
        }
        Ok((
            RouteRequest {
                pinned,
                min_top1: opts.min_top1,
            },
            budget,
        ))
    }

    /// Decode and preprocess on the blocking pool, a bounded number at once:
    /// decoded once, resized and normalised once per distinct preprocessing
    /// among the variants `route` may pick.
    ///
    /// A request waits for a preprocessing slot at most until its deadline
    /// (504 `deadline_expired`), and once it holds one, admission is checked
    /// again (`Batcher::precheck`): under overload the wait for a slot can
    /// use up the budget the first check saw, and a request that can no
    /// longer be met is refused before its image is decoded, not after.
    pub async fn preprocess_image(
        &self,
        bytes: axum::body::Bytes,
        route: &RouteRequest,
        arrival: Instant,
        deadline: Instant,
    ) -> Result<(Inputs, Duration), ServeError> {
        let _slot = match tokio::time::timeout_at(deadline.into(), self.slots.acquire()).await {
            Ok(slot) => slot.map_err(|_| ServeError::ShuttingDown)?,
            Err(_) => {
                return Err(ServeError::DeadlineExpired {
                    budget_ms: ms(deadline - arrival),
                    waited_ms: ms(arrival.elapsed()),
                })
            }
        };
        self.batcher.precheck(route, arrival, deadline)?;
        let (preps, slot) = self.preps_for(route);
        let limits = self.config.decode;
        let t0 = Instant::now();
        let tensors = tokio::task::spawn_blocking(move || {
            let img = preprocess::decode(&bytes, limits)?;
            preps
                .into_iter()
                .map(|prep| {
                    let bytes = preprocess::resize_crop(&img, &prep)?;
                    Ok(Tensor::Crop { bytes, prep })
                })
                .collect::<Result<Vec<_>, ServeError>>()
        })
        .await
        .map_err(|e| ServeError::Internal(format!("preprocessing task failed: {e}")))??;
        let tensor = if tensors.len() == 1 {
            match tensors.into_iter().next() {
                Some(t) => Inputs::same(t),
                None => {
                    return Err(ServeError::Internal(
                        "no preprocessing for the request".into(),
                    ))
                }
            }
        } else {
            Inputs::per_variant(tensors, slot)
        };
        let took = t0.elapsed();
        self.metrics.preprocess.observe(took.as_secs_f64());
        self.batcher.record_preprocess(took);
        Ok((tensor, took))
    }

    /// Route, queue and await one preprocessed tensor, answering 504 at the
    /// deadline rather than late.
    pub async fn infer(
        &self,
        tensor: impl Into<Inputs>,
        route: &RouteRequest,
        arrival: Instant,
        deadline: Instant,
    ) -> Result<Outcome, ServeError> {
        let (_, rx) = self
            .batcher
            .submit(route, arrival, deadline, tensor.into())?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            // The worker answered in time, but this task may be polled
            // later (all cores busy): never send an answer past its deadline.
            Ok(Ok(Ok(_))) if Instant::now() > deadline => Err(ServeError::AnswerLate {
                budget_ms: ms(deadline - arrival),
                took_ms: ms(arrival.elapsed()),
            }),
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ServeError::ShuttingDown),
            Err(_) => {
                self.metrics
                    .errors
                    .with_label_values(&["deadline_expired_in_flight"])
                    .inc();
                Err(ServeError::DeadlineExpired {
                    budget_ms: ms(deadline - arrival),
                    waited_ms: ms(arrival.elapsed()),
                })
            }
        }
    }

    /// The whole `/classify` path for one encoded image.
    pub async fn classify(
        &self,
        bytes: axum::body::Bytes,
        opts: &RequestOptions,
        top: usize,
        arrival: Instant,
    ) -> Result<Classification, ServeError> {
        let (route, budget) = self.resolve(opts)?;
        if top == 0 || top > self.config.max_top_k {
            return Err(ServeError::BadParameter {
                name: "top_k",
                reason: format!("must be in 1..={}", self.config.max_top_k),
            });
        }
        let deadline = arrival + budget;
        self.batcher.precheck(&route, arrival, deadline)?;
        let (tensor, pre) = self
            .preprocess_image(bytes, &route, arrival, deadline)
            .await?;
        let out = self.infer(tensor, &route, arrival, deadline).await?;
        let total = arrival.elapsed();
        let predictions = top_k(&out.logits, top)
            .into_iter()
            .map(|(index, score)| Prediction {
                index,
                label: self.labels.get(index).cloned().unwrap_or_default(),
                score,
            })
            .collect();
        Ok(Classification {
            variant: self.specs[out.variant].name.clone(),
            route: out.reason.as_str(),
            batch_size: out.batch_size,
            budget_ms: ms(budget),
            predictions,
            timings: Timings {
                queue_ms: ms(out.queue),
                preprocess_ms: ms(pre),
                inference_ms: ms(out.inference),
                total_ms: ms(total),
            },
        })
    }

    /// Record a refused or failed request in the metrics.
    pub fn record_error(&self, e: &ServeError, arrival: Instant) {
        self.record(None, e.http_status(), arrival, None);
        self.metrics.errors.with_label_values(&[e.kind()]).inc();
    }

    /// Record an answered request in the metrics (variant "none" when the
    /// request was refused before a variant was chosen).
    pub fn record(
        &self,
        variant: Option<&str>,
        status: u16,
        arrival: Instant,
        deadline_met: Option<bool>,
    ) {
        let name = variant.unwrap_or("none");
        if let Ok(mut r) = self.recent.lock() {
            match (
                variant.and_then(|v| self.variant_index(v).ok()),
                deadline_met,
            ) {
                (Some(v), Some(met)) if status == 200 => r.answered(v, met, Instant::now()),
                // Shed, expired, late or failed: the server's doing. Bad
                // input (4xx) is not counted against the SLA.
                _ if status >= 500 => r.refused(Instant::now()),
                _ => {}
            }
        }
        self.metrics
            .requests
            .with_label_values(&[name, &status.to_string()])
            .inc();
        if let (Some(v), Some(met)) = (variant, deadline_met) {
            self.metrics
                .request_duration
                .with_label_values(&[v])
                .observe(arrival.elapsed().as_secs_f64());
            self.metrics
                .sla
                .with_label_values(&[v, if met { "met" } else { "missed" }])
                .inc();
        }
    }
}
