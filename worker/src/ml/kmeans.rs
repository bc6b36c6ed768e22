//! Streaming k-means, as MLlib's `StreamingKMeansModel.update` (Spark source,
//! `mllib/clustering/StreamingKMeans.scala`): each micro-batch assigns its points to the nearest
//! center, then every center moves to the weighted mean of its discounted past and its new points:
//!
//! ```text
//! discount = decayFactor                      (timeUnit = batches)
//!          = decayFactor ^ points in batch    (timeUnit = points)
//! w' = w · discount + m            (m new points, sum s)
//! c' = (c · w · discount + s) / w'
//! ```
//! A center whose weight falls below 1e-8 of the largest is "dying": as MLlib, the largest cluster
//! is split in two and the dying center replaced. With decayFactor 1 and weight-0 initial centers
//! one batch is exactly one Lloyd step of batch k-means.

use serde::{Deserialize, Serialize};

/// Model state: `k` centers of `dim` values and their weights (points seen, discounted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KMeansState {
    pub centers: Vec<Vec<f64>>,
    pub weights: Vec<f64>,
}

/// How the forgetting factor applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    PerBatch(f64),
    PerPoint(f64),
}

/// Squared Euclidean distance.
pub fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

impl KMeansState {
    /// Random initial centers, as MLlib's `setRandomCenters(dim, weight, seed)`: standard normal
    /// values from a fixed generator (SplitMix64 + Box–Muller), so a seed always gives the same
    /// centers.
    pub fn random(k: usize, dim: usize, weight: f64, seed: u64) -> Self {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let centers = (0..k)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        let (u1, u2) = (next().max(f64::MIN_POSITIVE), next());
                        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
                    })
                    .collect()
            })
            .collect();
        Self {
            centers,
            weights: vec![weight; k],
        }
    }

    /// Index of the nearest center and the squared distance to it.
    pub fn nearest(&self, point: &[f64]) -> (usize, f64) {
        let mut best = (0, f64::INFINITY);
        for (i, center) in self.centers.iter().enumerate() {
            let d = squared_distance(center, point);
            if d < best.1 {
                best = (i, d);
            }
        }
        best
    }

    /// One mini-batch update with `points` (each of the centers' dimension).
    pub fn update(&mut self, points: &[Vec<f64>], decay: Decay) {
        if points.is_empty() {
            return;
        }
        let k = self.centers.len();
        let dim = self.centers.first().map(Vec::len).unwrap_or(0);
        let mut sums = vec![vec![0.0; dim]; k];
        let mut counts = vec![0.0f64; k];
        for point in points {
            let (i, _) = self.nearest(point);
            // `nearest` returns an index into `centers`, which `sums`/`counts` mirror.
            if let (Some(count), Some(sum)) = (counts.get_mut(i), sums.get_mut(i)) {
                *count += 1.0;
                for (s, x) in sum.iter_mut().zip(point) {
                    *s += x;
                }
            }
        }
        let discount = match decay {
            Decay::PerBatch(a) => a,
            Decay::PerPoint(a) => a.powf(points.len() as f64),
        };
        for ((center, weight), (sum, count)) in self
            .centers
            .iter_mut()
            .zip(self.weights.iter_mut())
            .zip(sums.iter().zip(&counts))
        {
            let old = *weight * discount;
            let new = old + count;
            if new > 0.0 {
                for (c, s) in center.iter_mut().zip(sum) {
                    *c = (*c * old + s) / new;
                }
            }
            *weight = new;
        }
        self.split_dying_clusters();
    }

    /// MLlib: if the smallest weight is below 1e-8 × the largest, split the largest cluster.
    fn split_dying_clusters(&mut self) {
        let (Some(largest), Some(smallest)) = (self.argmax(), self.argmin()) else {
            return;
        };
        let (Some(&w_largest), Some(&w_smallest)) =
            (self.weights.get(largest), self.weights.get(smallest))
        else {
            return;
        };
        if largest == smallest || w_smallest >= 1e-8 * w_largest {
            return;
        }
        let Some(center) = self.centers.get(largest).cloned() else {
            return;
        };
        let weight = (w_largest + w_smallest) / 2.0;
        for (i, w) in self.weights.iter_mut().enumerate() {
            if i == largest || i == smallest {
                *w = weight;
            }
        }
        if let Some(c) = self.centers.get_mut(largest) {
            *c = center
                .iter()
                .map(|x| x + 1e-14 * x.abs().max(1.0))
                .collect();
        }
        if let Some(c) = self.centers.get_mut(smallest) {
            *c = center
                .iter()
                .map(|x| x - 1e-14 * x.abs().max(1.0))
                .collect();
        }
    }

    fn argmax(&self) -> Option<usize> {
        self.weights
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    }

    fn argmin(&self) -> Option<usize> {
        self.weights
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    }
}

/// Decay factor from a half-life in time units: `0.5 ^ (1 / halfLife)` (MLlib's `setHalfLife`).
pub fn decay_from_half_life(half_life: f64) -> f64 {
    (0.5f64).powf(1.0 / half_life)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points around `centers` on a deterministic grid of offsets (radius ≤ 0.5).
    fn mixture(centers: &[[f64; 2]], per_cluster: usize) -> Vec<Vec<f64>> {
        let mut points = Vec::new();
        for i in 0..per_cluster {
            for c in centers {
                let angle = i as f64 * 2.399963;
                let r = 0.5 * ((i % 7) as f64 / 7.0);
                points.push(vec![c[0] + r * angle.cos(), c[1] + r * angle.sin()]);
            }
        }
        points
    }

    fn lloyd_step(centers: &[Vec<f64>], points: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let state = KMeansState {
            centers: centers.to_vec(),
            weights: vec![0.0; centers.len()],
        };
        let mut sums = vec![vec![0.0; 2]; centers.len()];
        let mut counts = vec![0.0; centers.len()];
        for p in points {
            let (i, _) = state.nearest(p);
            counts[i] += 1.0;
            sums[i][0] += p[0];
            sums[i][1] += p[1];
        }
        sums.iter()
            .zip(&counts)
            .map(|(s, n)| vec![s[0] / n, s[1] / n])
            .collect()
    }

    const TRUE: [[f64; 2]; 3] = [[0.0, 0.0], [10.0, 10.0], [-10.0, 8.0]];
    const START: [[f64; 2]; 3] = [[1.0, -1.0], [8.0, 9.0], [-7.0, 6.0]];

    fn start() -> KMeansState {
        KMeansState {
            centers: START.iter().map(|c| c.to_vec()).collect(),
            weights: vec![0.0; 3],
        }
    }

    #[test]
    fn one_batch_or_many_with_decay_one_equal_a_lloyd_step() {
        let points = mixture(&TRUE, 300);
        let expected = lloyd_step(&start().centers, &points);
        let mut one = start();
        one.update(&points, Decay::PerBatch(1.0));
        let mut many = start();
        for chunk in points.chunks(17) {
            many.update(chunk, Decay::PerBatch(1.0));
        }
        let pairs = expected.iter().zip(one.centers.iter().zip(&many.centers));
        for (i, (want, (got_one, got_many))) in pairs.enumerate() {
            for d in 0..2 {
                assert!((got_one[d] - want[d]).abs() < 1e-9, "one batch {i}/{d}");
                assert!((got_many[d] - want[d]).abs() < 1e-9, "many batches {i}/{d}");
            }
        }
        assert_eq!(many.weights, vec![300.0; 3]);
    }

    #[test]
    fn converges_to_the_true_centers_and_forgets_with_decay() {
        let mut model = KMeansState::random(3, 2, 0.0, 7);
        // Far random start: seed the centers with one point of each cluster, as k-means|| would.
        model.centers = vec![vec![0.3, 0.1], vec![9.5, 10.2], vec![-9.8, 7.7]];
        for chunk in mixture(&TRUE, 400).chunks(30) {
            model.update(chunk, Decay::PerBatch(0.9));
        }
        for (center, truth) in model.centers.iter().zip(TRUE) {
            assert!(
                squared_distance(center, &truth).sqrt() < 0.1,
                "{center:?} vs {truth:?}"
            );
        }
        // With decay, old weight fades: weights stay bounded by batch size / (1 - a).
        assert!(
            model.weights.iter().all(|w| *w < 10.0 / (1.0 - 0.9) + 1.0),
            "{:?}",
            model.weights
        );
    }

    #[test]
    fn half_life_gives_half_weight_after_that_many_batches() {
        let a = decay_from_half_life(5.0);
        assert!((a.powi(5) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn random_centers_are_deterministic() {
        assert_eq!(
            KMeansState::random(3, 2, 1.0, 42),
            KMeansState::random(3, 2, 1.0, 42)
        );
        assert_ne!(
            KMeansState::random(3, 2, 1.0, 42),
            KMeansState::random(3, 2, 1.0, 43)
        );
    }
}
