/// A segment that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The Parquet layer failed (corrupt or truncated bytes, or an encoder error).
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The Arrow layer failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The file is Parquet but not a valid Keepsake segment.
    #[error("invalid segment: {0}")]
    Invalid(String),
    /// The file was written by a newer format version than this build reads.
    #[error("segment format version {found} is not one this build reads ({known:?})")]
    UnknownVersion {
        /// The version in the file.
        found: u32,
        /// The versions this build reads.
        known: &'static [u32],
    },
}

pub(crate) fn invalid(msg: impl Into<String>) -> SegmentError {
    SegmentError::Invalid(msg.into())
}
