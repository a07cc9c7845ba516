//! Window specifications: the one spec both spellings lower to (`WINDOW TUMBLING (…)` and
//! `GROUP BY TUMBLE(ts, INTERVAL …)`), and the pseudo columns that name a window's bounds.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `WINDOWSTART`: the window's inclusive start, epoch milliseconds (BIGINT), as ksqlDB.
pub const WINDOWSTART: &str = "windowstart";
/// `WINDOWEND`: the window's exclusive end, epoch milliseconds (BIGINT), as ksqlDB.
pub const WINDOWEND: &str = "windowend";
/// `window_start`: the window's start as a TIMESTAMP, as Flink's window functions.
pub const WINDOW_START: &str = "window_start";
/// `window_end`: the window's end as a TIMESTAMP, as Flink's window functions.
pub const WINDOW_END: &str = "window_end";
/// All window bound columns, in the order they are added to a windowed source's schema.
pub const WINDOW_COLUMNS: [&str; 4] = [WINDOWSTART, WINDOWEND, WINDOW_START, WINDOW_END];

/// One day: ksqlDB's default grace is `max(24 h − size, 0)`.
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The shape of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowKind {
    /// Fixed-size, non-overlapping windows aligned to the epoch.
    Tumbling {
        /// Window size in milliseconds.
        size_ms: i64,
    },
    /// Fixed-size windows starting every `advance_ms`, aligned to the epoch.
    Hopping {
        /// Window size in milliseconds.
        size_ms: i64,
        /// Distance between window starts in milliseconds.
        advance_ms: i64,
    },
    /// Per-key sessions closed by a gap of inactivity.
    Session {
        /// Inactivity gap in milliseconds.
        gap_ms: i64,
    },
}

/// A window with its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// The window's shape.
    pub kind: WindowKind,
    /// The grace period given by the user, if any.
    pub grace_ms: Option<i64>,
    /// The retention given by the user, if any (kept for pull queries; see issue 4).
    pub retention_ms: Option<i64>,
}

impl WindowSpec {
    /// The size used for the default grace: the window size, or the gap for sessions.
    pub fn size_ms(&self) -> i64 {
        match self.kind {
            WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => size_ms,
            WindowKind::Session { gap_ms } => gap_ms,
        }
    }

    /// The most windows a record is in: `ceil(size / advance)` for hopping windows, else 1.
    pub fn most_windows(&self) -> u64 {
        match self.kind {
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => (size_ms.saturating_add(advance_ms - 1) / advance_ms).max(1) as u64,
            _ => 1,
        }
    }

    /// The grace in force: the given one, else ksqlDB's default `max(24 h − size, 0)`
    /// for `EMIT CHANGES`, and 0 for `EMIT FINAL`.
    pub fn effective_grace_ms(&self, emit: crate::Emit) -> i64 {
        match (self.grace_ms, emit) {
            (Some(g), _) => g,
            (None, crate::Emit::Final) => 0,
            (None, crate::Emit::Changes) => (DAY_MS - self.size_ms()).max(0),
        }
    }

    /// The starts of the time windows that contain `ts` (not negative: the scan skips
    /// earlier times), ascending. Windows with a negative start are never created, as
    /// ksqlDB. Empty for sessions.
    pub fn window_starts(&self, ts: i64, out: &mut Vec<i64>) {
        out.clear();
        match self.kind {
            WindowKind::Tumbling { size_ms } => out.push(ts - ts.rem_euclid(size_ms)),
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => {
                let last = ts - ts.rem_euclid(advance_ms);
                let mut start = last.saturating_sub(((size_ms - 1) / advance_ms) * advance_ms);
                while start <= last {
                    if start >= 0 && start.saturating_add(size_ms) > ts {
                        out.push(start);
                    }
                    start = start.saturating_add(advance_ms);
                    if start == i64::MAX {
                        break;
                    }
                }
            }
            WindowKind::Session { .. } => {}
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WindowKind::Tumbling { size_ms } => write!(f, "TUMBLING(size={})", ms(size_ms))?,
            WindowKind::Hopping {
                size_ms,
                advance_ms,
            } => write!(
                f,
                "HOPPING(size={}, advance={})",
                ms(size_ms),
                ms(advance_ms)
            )?,
            WindowKind::Session { gap_ms } => write!(f, "SESSION(gap={})", ms(gap_ms))?,
        }
        Ok(())
    }
}

/// Render milliseconds in the largest unit that divides them (`5m`, `90s`, `0ms`).
pub fn ms(v: i64) -> String {
    let d = Duration::from_millis(v.max(0) as u64);
    let s = d.as_secs();
    if v % 86_400_000 == 0 && v > 0 {
        format!("{}d", s / 86_400)
    } else if v % 3_600_000 == 0 && v > 0 {
        format!("{}h", s / 3600)
    } else if v % 60_000 == 0 && v > 0 {
        format!("{}m", s / 60)
    } else if v % 1000 == 0 && v > 0 {
        format!("{s}s")
    } else {
        format!("{v}ms")
    }
}

/// Milliseconds in one `unit` as ksqlDB spells units (`SECOND`, `SECONDS`, …), if known.
pub fn unit_ms(unit: &str) -> Option<i64> {
    let u = unit.to_ascii_uppercase();
    let u = u.strip_suffix('S').unwrap_or(&u);
    Some(match u {
        "MILLISECOND" => 1,
        "SECOND" => 1000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(size_ms: i64, advance_ms: i64) -> WindowSpec {
        WindowSpec {
            kind: WindowKind::Hopping {
                size_ms,
                advance_ms,
            },
            grace_ms: None,
            retention_ms: None,
        }
    }

    #[test]
    fn tumbling_window_is_aligned_to_the_epoch() {
        let w = WindowSpec {
            kind: WindowKind::Tumbling { size_ms: 1000 },
            grace_ms: None,
            retention_ms: None,
        };
        let mut out = vec![];
        w.window_starts(2500, &mut out);
        assert_eq!(out, vec![2000]);
        w.window_starts(2000, &mut out);
        assert_eq!(out, vec![2000]);
    }

    #[test]
    fn hopping_windows_contain_the_record_and_never_start_negative() {
        let mut out = vec![];
        hop(30_000, 15_000).window_starts(10, &mut out);
        assert_eq!(out, vec![0]);
        hop(30_000, 15_000).window_starts(40_000, &mut out);
        assert_eq!(out, vec![15_000, 30_000]);
        hop(30_000, 10_000).window_starts(30_000, &mut out);
        assert_eq!(out, vec![10_000, 20_000, 30_000]);
    }

    #[test]
    fn default_grace_is_a_day_minus_the_size() {
        let w = hop(3_600_000, 60_000);
        assert_eq!(
            w.effective_grace_ms(crate::Emit::Changes),
            DAY_MS - 3_600_000
        );
        assert_eq!(w.effective_grace_ms(crate::Emit::Final), 0);
    }
}
