//! Streaming linear regression, as MLlib's `StreamingLinearRegressionWithSGD`: on every micro-batch
//! the weights are refined by `numIterations` steps of gradient descent on the batch's rows
//! (least-squares gradient, MLlib's `SimpleUpdater`: step `stepSize / sqrt(i)`, mini-batch
//! fraction 1), starting from the current weights.

use serde::{Deserialize, Serialize};

/// Model state: one weight per feature (plus a trailing intercept weight when fitted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RegressionState {
    pub weights: Vec<f64>,
    pub fit_intercept: bool,
}

impl RegressionState {
    /// The model's prediction for `features` (without the constant 1).
    pub fn predict(&self, features: &[f64]) -> f64 {
        let dot: f64 = self.weights.iter().zip(features).map(|(w, x)| w * x).sum();
        let intercept = if self.fit_intercept {
            self.weights.last().copied().unwrap_or(0.0)
        } else {
            0.0
        };
        dot + intercept
    }

    /// Refines the weights on one batch of `(features, label)` rows.
    pub fn train(&mut self, rows: &[(Vec<f64>, f64)], step_size: f64, iterations: u32) {
        if rows.is_empty() {
            return;
        }
        let n = rows.len() as f64;
        let dims = self.weights.len();
        for i in 1..=iterations {
            let mut gradient = vec![0.0; dims];
            for (x, y) in rows {
                let error = self.predict(x) - y;
                for (g, xi) in gradient.iter_mut().zip(x) {
                    *g += error * xi;
                }
                if self.fit_intercept
                    && let Some(g) = gradient.last_mut()
                {
                    *g += error;
                }
            }
            let step = step_size / f64::from(i).sqrt();
            for (w, g) in self.weights.iter_mut().zip(&gradient) {
                *w -= step * g / n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_known_coefficients_from_noisy_data() {
        // y = 2·x1 − 3·x2 + 0.5 + noise(±0.05), x in [-1, 1].
        let mut state = 0x1234_5678u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 20_001) as f64 / 10_000.0 - 1.0
        };
        let rows: Vec<(Vec<f64>, f64)> = (0..4_000)
            .map(|_| {
                let (x1, x2, noise) = (uniform(), uniform(), uniform() * 0.05);
                (vec![x1, x2], 2.0 * x1 - 3.0 * x2 + 0.5 + noise)
            })
            .collect();
        let mut model = RegressionState {
            weights: vec![0.0; 3],
            fit_intercept: true,
        };
        for batch in rows.chunks(100) {
            model.train(batch, 0.5, 50);
        }
        let expected = [2.0, -3.0, 0.5];
        for (w, e) in model.weights.iter().zip(expected) {
            assert!(
                (w - e).abs() < 0.05,
                "weights {:?} vs {expected:?}",
                model.weights
            );
        }
    }
}
