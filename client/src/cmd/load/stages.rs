//! Load shapes: a target (calls per second in an open loop, or sessions in
//! a closed loop) that moves linearly from stage to stage, as in k6's
//! ramping executors: `start`, then each stage reaches its `target` at its
//! end (a stage that keeps the target holds it).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub target: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub start: f64,
    pub stages: Vec<Stage>,
}

impl Profile {
    /// One target held for `duration`.
    pub fn hold(target: f64, duration: Duration) -> Self {
        Self {
            start: target,
            stages: vec![Stage { duration, target }],
        }
    }

    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// The target `t` seconds in (the last target after the end).
    pub fn target_at(&self, t: f64) -> f64 {
        let mut from = self.start;
        let mut t0 = 0.0;
        for s in &self.stages {
            let d = s.duration.as_secs_f64();
            if t < t0 + d {
                return from + (s.target - from) * (t - t0) / d;
            }
            t0 += d;
            from = s.target;
        }
        from
    }

    /// Read as calls per second: when each call is due, in seconds from the
    /// start. The k-th call is due when the rate's integral reaches k.
    pub fn arrivals(&self) -> Arrivals<'_> {
        Arrivals {
            profile: self,
            seg: 0,
            seg_start: 0.0,
            seg_calls: 0.0,
            k: 0,
        }
    }

    /// Read as calls per second: how many calls the whole profile sends.
    pub fn calls(&self) -> f64 {
        let mut from = self.start;
        let mut n = 0.0;
        for s in &self.stages {
            n += (from + s.target) / 2.0 * s.duration.as_secs_f64();
            from = s.target;
        }
        n
    }
}

pub struct Arrivals<'a> {
    profile: &'a Profile,
    seg: usize,
    /// When the current stage starts, and how many calls came before it.
    seg_start: f64,
    seg_calls: f64,
    k: u64,
}

impl Iterator for Arrivals<'_> {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        loop {
            let stage = self.profile.stages.get(self.seg)?;
            let from = match self.seg {
                0 => self.profile.start,
                i => self.profile.stages[i - 1].target,
            };
            let d = stage.duration.as_secs_f64();
            let in_stage = (from + stage.target) / 2.0 * d;
            let m = self.k as f64 - self.seg_calls;
            if m < in_stage {
                // from·t + slope·t²/2 = m, in the form that is stable for any slope
                let slope = (stage.target - from) / d;
                let t = if m <= 0.0 {
                    0.0
                } else {
                    2.0 * m / (from + (from * from + 2.0 * slope * m).max(0.0).sqrt())
                };
                self.k += 1;
                return Some(self.seg_start + t.min(d));
            }
            self.seg_start += d;
            self.seg_calls += in_stage;
            self.seg += 1;
        }
    }
}

/// Shard `shard` (0-based) of `shards`' part of `total` whole things
/// (sessions, streams): the parts add up to `total`.
pub fn split(total: usize, shard: usize, shards: usize) -> usize {
    let shards = shards.max(1);
    total / shards + usize::from(shard < total % shards)
}

/// Parses `10s:100` (a stage: reach 100 by the end of 10 s).
pub fn parse_stage(text: &str) -> Result<Stage, String> {
    let (d, t) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}`: write a stage as DURATION:TARGET, e.g. 30s:500"))?;
    let duration = humantime::parse_duration(d.trim()).map_err(|e| format!("`{d}`: {e}"))?;
    let target: f64 = t
        .trim()
        .parse()
        .map_err(|_| format!("`{t}`: the target must be a number"))?;
    if !(target.is_finite() && target >= 0.0) {
        return Err(format!("`{t}`: the target must be 0 or more"));
    }
    Ok(Stage { duration, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_held_rate_is_evenly_spaced() {
        let p = Profile::hold(10.0, secs(2.0));
        let a: Vec<f64> = p.arrivals().collect();
        assert_eq!(a.len(), 20);
        for (k, t) in a.iter().enumerate() {
            assert!((t - k as f64 / 10.0).abs() < 1e-9, "{k}: {t}");
        }
    }

    #[test]
    fn a_ramp_sends_its_integral_and_speeds_up() {
        // 0 → 100 calls/s over 10 s: 500 calls, a quarter of them in the first half
        let p = Profile {
            start: 0.0,
            stages: vec![Stage {
                duration: secs(10.0),
                target: 100.0,
            }],
        };
        let a: Vec<f64> = p.arrivals().collect();
        assert_eq!(a.len(), 500);
        assert_eq!(p.calls(), 500.0);
        assert_eq!(a.iter().filter(|t| **t < 5.0).count(), 125);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!((p.target_at(2.5) - 25.0).abs() < 1e-9);
    }

    #[test]
    fn ramp_hold_and_ramp_down_add_up() {
        let p = Profile {
            start: 0.0,
            stages: vec![
                Stage {
                    duration: secs(2.0),
                    target: 50.0,
                },
                Stage {
                    duration: secs(2.0),
                    target: 50.0,
                },
                Stage {
                    duration: secs(2.0),
                    target: 0.0,
                },
            ],
        };
        let a: Vec<f64> = p.arrivals().collect();
        assert_eq!(a.len(), 200);
        let per_stage = |lo: f64, hi: f64| a.iter().filter(|t| **t >= lo && **t < hi).count();
        assert_eq!(
            (
                per_stage(0.0, 2.0),
                per_stage(2.0, 4.0),
                per_stage(4.0, 6.0)
            ),
            (50, 100, 50)
        );
        assert_eq!(p.target_at(5.0), 25.0);
        assert_eq!(p.target_at(99.0), 0.0);
        assert_eq!(p.total(), secs(6.0));
    }

    #[test]
    fn shares_add_up_to_the_whole() {
        for total in 0..20 {
            assert_eq!((0..3).map(|i| split(total, i, 3)).sum::<usize>(), total);
        }
        assert_eq!(split(5, 0, 2), 3);
        assert_eq!(split(5, 1, 2), 2);
    }

    #[test]
    fn stages_parse_from_the_command_line() {
        assert_eq!(
            parse_stage("30s:500").unwrap(),
            Stage {
                duration: secs(30.0),
                target: 500.0
            }
        );
        for bad in ["30s", "x:1", "1s:y", "1s:-1"] {
            assert!(parse_stage(bad).is_err(), "{bad}");
        }
    }
}
