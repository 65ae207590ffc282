//! How an attempt ended, as the `outcome` label says it.

/// How an attempt ended; see the [outcomes](super#outcomes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Completed,
    Retried,
    Failed,
    Cancelled,
    Snoozed,
    Interrupted,
    Lost,
}

impl AttemptOutcome {
    /// Every outcome, in the order of [`index`](Self::index).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Self; 7] = [
        Self::Completed,
        Self::Retried,
        Self::Failed,
        Self::Cancelled,
        Self::Snoozed,
        Self::Interrupted,
        Self::Lost,
    ];

    /// The value of the `outcome` label.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retried => "retried",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Snoozed => "snoozed",
            Self::Interrupted => "interrupted",
            Self::Lost => "lost",
        }
    }

    /// Its position in [`ALL`](Self::ALL).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
