use keepsake_model::MassDeleteRefused;
use keepsake_segment::SegmentError;
use keepsake_store::StoreError;

/// Why the log could not do what was asked.
///
/// Retryable errors ([`LogError::is_retryable`]) mean nothing was acknowledged: the caller may
/// send the same changes again, and change ids make that safe even if they were in fact written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The shard's writer queue is full.
    #[error("shard {shard} is overloaded: its writer queue is full")]
    Overloaded {
        /// The shard.
        shard: u32,
    },
    /// The store failed and the batch was not committed (or could not be confirmed).
    #[error("shard {shard}: the store is unavailable: {reason}")]
    Unavailable {
        /// The shard.
        shard: u32,
        /// What failed (no user data).
        reason: String,
    },
    /// Another writer committed the segment this writer tried to write.
    #[error("shard {shard}: segment {segment} was committed by another writer; retry")]
    Fenced {
        /// The shard.
        shard: u32,
        /// The contested segment number.
        segment: u64,
    },
    /// This server does not own the shard now (a cluster: another server took it, or it is
    /// being handed over). Nothing was acknowledged; the request belongs to the owner.
    #[error("shard {shard} is not owned by this server now; retry")]
    NotOwner {
        /// The shard.
        shard: u32,
    },
    /// The push would delete too many items and did not confirm it.
    #[error(transparent)]
    MassDelete(#[from] MassDeleteRefused),
    /// A restore's push would not apply whole: some of its changes conflicted (an item moved on
    /// since the restore read it) or were rejected. Nothing of it was written.
    #[error(
        "shard {shard}: {refused} of the restore's changes would not apply ({first}); nothing was written"
    )]
    Incomplete {
        /// The shard.
        shard: u32,
        /// How many changes would not apply.
        refused: usize,
        /// What happened to the first of them.
        first: String,
    },
    /// The log is shutting down and takes no more pushes.
    #[error("the log is shutting down")]
    ShuttingDown,
    /// A segment is missing while later ones exist: the log is damaged; nothing past the gap is
    /// read and the shard does not open.
    #[error("shard {shard}: segment {missing} is missing but later segments exist")]
    Gap {
        /// The shard.
        shard: u32,
        /// The first missing segment number.
        missing: u64,
    },
    /// A segment cannot be decoded, or its events do not fit the log before it.
    #[error("shard {shard} segment {segment}: {detail}")]
    Corrupt {
        /// The shard.
        shard: u32,
        /// The segment.
        segment: u64,
        /// What is wrong.
        detail: String,
    },
    /// Reading from the store failed.
    #[error("{context}: {source}")]
    Store {
        /// What was being done ("list segments").
        context: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Opening the store failed.
    #[error(transparent)]
    Open(#[from] StoreError),
}

impl LogError {
    /// True when retrying the same request later may succeed and nothing was acknowledged.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LogError::Overloaded { .. }
                | LogError::Unavailable { .. }
                | LogError::Fenced { .. }
                | LogError::NotOwner { .. }
                | LogError::ShuttingDown
                | LogError::Store { .. }
        )
    }

    pub(crate) fn corrupt(shard: u32, segment: u64, e: impl std::fmt::Display) -> Self {
        LogError::Corrupt {
            shard,
            segment,
            detail: e.to_string(),
        }
    }

    /// An error of a user read (run under `with_relisting`): an object that went away after it
    /// was listed — compaction moved it into a wider history object — is a gap, which the read
    /// answers by locating the segments again; never an error for the caller while the data is
    /// in the store. Anything else as [`LogError::segment`].
    pub(crate) fn user_read(shard: u32, segment: u64, e: SegmentError) -> Self {
        match e {
            SegmentError::Parquet(parquet::errors::ParquetError::External(source))
                if source
                    .downcast_ref::<object_store::Error>()
                    .is_some_and(|e| matches!(e, object_store::Error::NotFound { .. })) =>
            {
                LogError::Gap {
                    shard,
                    missing: segment,
                }
            }
            other => LogError::segment(shard, segment, other),
        }
    }

    pub(crate) fn segment(shard: u32, segment: u64, e: SegmentError) -> Self {
        match e {
            // A store error surfaced through the Parquet reader: not corruption.
            SegmentError::Parquet(parquet::errors::ParquetError::External(source)) => {
                LogError::Unavailable {
                    shard,
                    reason: format!("read segment {segment}: {source}"),
                }
            }
            other => LogError::corrupt(shard, segment, other),
        }
    }
}

pub(crate) fn store_err(
    context: impl Into<String>,
) -> impl FnOnce(object_store::Error) -> LogError {
    let context = context.into();
    move |source| LogError::Store { context, source }
}
