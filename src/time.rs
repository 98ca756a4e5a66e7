//! What `task.wait` measures: the game clock, the real clock and the frame counter the scheduler
//! reads once per step, kept as integer nanoseconds so waits compare exactly.

use std::time::Duration;

/// Which clock a timer runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClockKind {
    /// The schedule's `Time` (virtual time in `Update`: pauses and scales).
    Game,
    /// Bevy's `Time<Real>`: neither paused nor scaled.
    Real,
}

/// The clocks as of the current step.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Clock {
    /// Game time since start, in nanoseconds.
    pub game_ns: u64,
    /// Game time that passed during the last frame, in nanoseconds.
    pub delta_ns: u64,
    /// Real time since start, in nanoseconds.
    pub real_ns: u64,
    /// Steps run so far (the frame counter scripts see).
    pub frame: u64,
}

impl Clock {
    /// Advances to a new frame with the given readings of Bevy's clocks.
    pub fn advance(&mut self, game: Duration, delta: Duration, real: Duration) {
        self.game_ns = nanos(game);
        self.delta_ns = nanos(delta);
        self.real_ns = nanos(real);
        self.frame += 1;
    }

    /// The current reading of `kind`, in nanoseconds.
    pub fn now(&self, kind: ClockKind) -> u64 {
        match kind {
            ClockKind::Game => self.game_ns,
            ClockKind::Real => self.real_ns,
        }
    }
}

/// A duration in whole nanoseconds (saturating at `u64::MAX`, some 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Seconds as a Lua script gives them, rounded up to whole nanoseconds so that a wait of
/// `s` seconds never returns before `s` seconds passed. `None` for nil, zero, negative or NaN.
pub(crate) fn seconds_to_nanos(seconds: f64) -> Option<u64> {
    if seconds.is_nan() || seconds <= 0.0 {
        return None;
    }
    let ns = (seconds * 1e9).ceil();
    Some(if ns >= u64::MAX as f64 { u64::MAX } else { ns as u64 })
}

/// Nanoseconds as the seconds a script sees.
pub(crate) fn nanos_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_and_reject_non_positive() {
        assert_eq!(seconds_to_nanos(0.5), Some(500_000_000));
        assert_eq!(seconds_to_nanos(1e-10), Some(1), "a positive wait is at least 1 ns");
        assert_eq!(seconds_to_nanos(0.0), None);
        assert_eq!(seconds_to_nanos(-1.0), None);
        assert_eq!(seconds_to_nanos(f64::NAN), None);
        assert_eq!(seconds_to_nanos(f64::INFINITY), Some(u64::MAX));
    }

    #[test]
    fn elapsed_never_reads_below_the_wait() {
        for s in [0.1, 0.2, 0.3, 1.0 / 3.0, 0.7, 2.5] {
            let ns = seconds_to_nanos(s).unwrap();
            assert!(nanos_to_seconds(ns) >= s, "{s} s became {} s", nanos_to_seconds(ns));
        }
    }
}
