//! One error type for every transport, and one table that maps each kind to
//! its HTTP status and its gRPC status code (numbers from the gRPC spec).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("request body is empty: send the image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF) as the body or as multipart field 'image'")]
    EmptyBody,
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("unsupported content type '{0}': send image/* , application/octet-stream or multipart/form-data")]
    UnsupportedMediaType(String),
    #[error("body is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnknownImageFormat,
    #[error("image could not be decoded: {0}")]
    BadImage(String),
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {limit} pixels")]
    ImageTooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("bad multipart body: {0}")]
    BadMultipart(String),
    #[error("unknown variant '{name}'; valid variants: {}", valid.join(", "))]
    UnknownVariant { name: String, valid: Vec<String> },
    #[error("unknown model '{name}'")]
    UnknownModel { name: String },
    #[error("no such endpoint")]
    NoSuchEndpoint,
    #[error("bad header {name}: {reason}")]
    BadHeader { name: &'static str, reason: String },
    #[error("bad parameter {name}: {reason}")]
    BadParameter { name: &'static str, reason: String },
    #[error("no variant has top-1 accuracy >= {min}: the best is {best}")]
    NoVariantAccurateEnough { min: f64, best: f64 },
    #[error("server is overloaded: the queue is full ({capacity} requests), retry later")]
    QueueFull { capacity: usize },
    #[error("latency budget of {budget_ms} ms cannot be met: the best predicted latency is {best_ms:.1} ms (variant '{variant}')")]
    BudgetUnmeetable {
        budget_ms: f64,
        best_ms: f64,
        variant: String,
    },
    #[error("deadline of {budget_ms} ms passed after {waited_ms:.1} ms in the queue; the request was dropped before inference")]
    DeadlineExpired { budget_ms: f64, waited_ms: f64 },
    #[error("the answer was ready after {took_ms:.1} ms, past the {budget_ms} ms budget; it is not sent late")]
    AnswerLate { budget_ms: f64, took_ms: f64 },
    #[error("server is not ready: models are still loading")]
    NotReady,
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the request body had not arrived after {waited_ms:.0} ms (the request's deadline, or the server's limit); the request is dropped")]
    BodyTimeout { waited_ms: f64 },
    #[error("inference failed: {0}")]
    InferenceFailed(String),
    #[error(
        "inference is unavailable: every worker is being replaced after engine faults, retry later"
    )]
    WorkersFailing,
}

/// gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    FailedPrecondition = 9,
    ResourceExhausted = 8,
    Internal = 13,
    Unimplemented = 12,
    Unavailable = 14,
}

impl ServeError {
    /// The table: (HTTP status, gRPC code, short machine-readable kind).
    pub fn table(&self) -> (u16, GrpcCode, &'static str) {
        use GrpcCode::{
            DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted,
            Unavailable,
        };
        use ServeError::*;
        match self {
            EmptyBody => (400, InvalidArgument, "empty_body"),
            BodyTooLarge { .. } => (413, InvalidArgument, "body_too_large"),
            UnsupportedMediaType(_) => (415, InvalidArgument, "unsupported_media_type"),
            UnknownImageFormat => (415, InvalidArgument, "unknown_image_format"),
            BadImage(_) => (400, InvalidArgument, "bad_image"),
            ImageTooLarge { .. } => (413, InvalidArgument, "image_too_large"),
            BadMultipart(_) => (400, InvalidArgument, "bad_multipart"),
            UnknownVariant { .. } => (400, NotFound, "unknown_variant"),
            UnknownModel { .. } => (404, NotFound, "unknown_model"),
            NoSuchEndpoint => (404, GrpcCode::Unimplemented, "no_such_endpoint"),
            BadHeader { .. } => (400, InvalidArgument, "bad_header"),
            BadParameter { .. } => (400, InvalidArgument, "bad_parameter"),
            NoVariantAccurateEnough { .. } => {
                (400, FailedPrecondition, "no_variant_accurate_enough")
            }
            QueueFull { .. } => (503, ResourceExhausted, "queue_full"),
            BudgetUnmeetable { .. } => (503, Unavailable, "budget_unmeetable"),
            DeadlineExpired { .. } => (504, DeadlineExceeded, "deadline_expired"),
            AnswerLate { .. } => (504, DeadlineExceeded, "answer_late"),
            NotReady => (503, Unavailable, "not_ready"),
            ShuttingDown => (503, Unavailable, "shutting_down"),
            Internal(_) => (500, GrpcCode::Internal, "internal"),
            BodyTimeout { .. } => (408, DeadlineExceeded, "body_timeout"),
            InferenceFailed(_) => (500, GrpcCode::Internal, "inference_failed"),
            WorkersFailing => (503, Unavailable, "inference_unavailable"),
        }
    }

    pub fn http_status(&self) -> u16 {
        self.table().0
    }

    pub fn grpc_code(&self) -> GrpcCode {
        self.table().1
    }

    pub fn kind(&self) -> &'static str {
        self.table().2
    }

    /// One error of each kind, for the documents that list them (the
    /// OpenAPI description's error body). A new variant fails to compile
    /// in `every_kind_is_listed` below until it is added here.
    pub fn examples() -> Vec<ServeError> {
        use ServeError::*;
        let s = String::new;
        vec![
            EmptyBody,
            BodyTooLarge { limit: 0 },
            UnsupportedMediaType(s()),
            UnknownImageFormat,
            BadImage(s()),
            ImageTooLarge {
                width: 0,
                height: 0,
                pixels: 0,
                limit: 0,
            },
            BadMultipart(s()),
            UnknownVariant {
                name: s(),
                valid: vec![],
            },
            UnknownModel { name: s() },
            NoSuchEndpoint,
            BadHeader {
                name: "",
                reason: s(),
            },
            BadParameter {
                name: "",
                reason: s(),
            },
            NoVariantAccurateEnough {
                min: 0.0,
                best: 0.0,
            },
            QueueFull { capacity: 0 },
            BudgetUnmeetable {
                budget_ms: 0.0,
                best_ms: 0.0,
                variant: s(),
            },
            DeadlineExpired {
                budget_ms: 0.0,
                waited_ms: 0.0,
            },
            AnswerLate {
                budget_ms: 0.0,
                took_ms: 0.0,
            },
            NotReady,
            ShuttingDown,
            Internal(s()),
            BodyTimeout { waited_ms: 0.0 },
            InferenceFailed(s()),
            WorkersFailing,
        ]
    }

    /// How long a client should wait before retrying, for the 503 answers.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ServeError::QueueFull { .. } | ServeError::BudgetUnmeetable { .. } => {
                Some(Duration::from_secs(1))
            }
            ServeError::NotReady | ServeError::WorkersFailing => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_4xx_and_overload_is_503() {
        let bad = [
            ServeError::EmptyBody,
            ServeError::UnknownImageFormat,
            ServeError::BadImage("x".into()),
            ServeError::ImageTooLarge {
                width: 1,
                height: 1,
                pixels: 1,
                limit: 0,
            },
            ServeError::UnknownVariant {
                name: "x".into(),
                valid: vec!["full".into()],
            },
            ServeError::BadHeader {
                name: "x-sla-ms",
                reason: "nan".into(),
            },
        ];
        for e in bad {
            assert!((400..500).contains(&e.http_status()), "{e}");
            assert!(e.retry_after().is_none());
        }
        let shed = ServeError::BudgetUnmeetable {
            budget_ms: 5.0,
            best_ms: 30.0,
            variant: "int8".into(),
        };
        assert_eq!(shed.table().0, 503);
        assert_eq!(shed.grpc_code(), GrpcCode::Unavailable);
        assert!(shed.retry_after().is_some());
        let late = ServeError::DeadlineExpired {
            budget_ms: 5.0,
            waited_ms: 6.0,
        };
        assert_eq!((late.http_status(), late.grpc_code() as i32), (504, 4));
        let late = ServeError::AnswerLate {
            budget_ms: 5.0,
            took_ms: 6.0,
        };
        assert_eq!((late.http_status(), late.grpc_code() as i32), (504, 4));
    }

    /// Exhaustive on purpose (no `_` arm): a new error variant must be
    /// added to `examples`, or the documents listing the kinds drift.
    fn every_kind_is_listed(e: &ServeError) -> bool {
        use ServeError::*;
        match e {
            EmptyBody
            | BodyTooLarge { .. }
            | UnsupportedMediaType(_)
            | UnknownImageFormat
            | BadImage(_)
            | ImageTooLarge { .. }
            | BadMultipart(_)
            | UnknownVariant { .. }
            | UnknownModel { .. }
            | NoSuchEndpoint
            | BadHeader { .. }
            | BadParameter { .. }
            | NoVariantAccurateEnough { .. }
            | QueueFull { .. }
            | BudgetUnmeetable { .. }
            | DeadlineExpired { .. }
            | AnswerLate { .. }
            | NotReady
            | ShuttingDown
            | Internal(_)
            | BodyTimeout { .. }
            | InferenceFailed(_)
            | WorkersFailing => true,
        }
    }

    #[test]
    fn examples_hold_one_error_of_each_kind() {
        let ex = ServeError::examples();
        let mut kinds: Vec<&str> = ex.iter().map(ServeError::kind).collect();
        assert!(ex.iter().all(every_kind_is_listed));
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), ex.len(), "two examples of one kind");
        // The arms of the exhaustive match above, counted by hand.
        assert_eq!(ex.len(), 23);
    }

    #[test]
    fn unknown_variant_lists_the_valid_ones() {
        let e = ServeError::UnknownVariant {
            name: "big".into(),
            valid: vec!["full".into(), "int8".into()],
        };
        assert_eq!(
            e.to_string(),
            "unknown variant 'big'; valid variants: full, int8"
        );
    }
}
