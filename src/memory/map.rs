//! The memory map: records' vectors projected to two dimensions (their first two principal
//! components, by power iteration: no matrix bigger than the vectors themselves is formed), so
//! the page can draw what the world has learned as points, near meaning near.

/// Projects `vectors` (all of one length) onto their first two principal components. Answers
/// one `[x, y]` per vector and the share of the variance each axis explains. Deterministic.
pub fn project(vectors: &[Vec<f32>]) -> (Vec<[f32; 2]>, [f32; 2]) {
    let n = vectors.len();
    let d = vectors.first().map_or(0, Vec::len);
    if n == 0 || d == 0 || vectors.iter().any(|v| v.len() != d) {
        return (vec![[0.0, 0.0]; n], [0.0, 0.0]);
    }
    let mut mean = vec![0f64; d];
    for v in vectors {
        for (m, x) in mean.iter_mut().zip(v) {
            *m += f64::from(*x) / n as f64;
        }
    }
    let centred: Vec<Vec<f64>> = vectors
        .iter()
        .map(|v| {
            v.iter()
                .zip(&mean)
                .map(|(x, m)| f64::from(*x) - m)
                .collect()
        })
        .collect();
    let total: f64 = centred.iter().flatten().map(|x| x * x).sum();
    let mut axes: Vec<Vec<f64>> = Vec::new();
    let mut explained = [0f32; 2];
    for (a, share) in explained.iter_mut().enumerate() {
        // A fixed, uneven start (never orthogonal to the data by accident in practice).
        let mut axis: Vec<f64> = (0..d)
            .map(|i| 1.0 + ((i * 7 + a * 13) % 11) as f64 / 10.0)
            .collect();
        let mut variance = 0.0;
        for _ in 0..40 {
            for prev in &axes {
                let dot: f64 = axis.iter().zip(prev).map(|(x, p)| x * p).sum();
                axis.iter_mut().zip(prev).for_each(|(x, p)| *x -= dot * p);
            }
            let norm = axis.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            axis.iter_mut().for_each(|x| *x /= norm);
            // axis <- Xᵀ X axis
            let mut next = vec![0f64; d];
            variance = 0.0;
            for row in &centred {
                let s: f64 = row.iter().zip(&axis).map(|(x, w)| x * w).sum();
                variance += s * s;
                next.iter_mut().zip(row).for_each(|(y, x)| *y += s * x);
            }
            axis = next;
        }
        let norm = axis.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            axis.iter_mut().for_each(|x| *x /= norm);
        }
        *share = if total > 0.0 {
            (variance / total) as f32
        } else {
            0.0
        };
        axes.push(axis);
    }
    let points = centred
        .iter()
        .map(|row| {
            let at = |axis: &Vec<f64>| row.iter().zip(axis).map(|(x, w)| x * w).sum::<f64>() as f32;
            [at(&axes[0]), at(&axes[1])]
        })
        .collect();
    (points, explained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_axis_follows_the_widest_spread_and_near_stays_near() {
        // Points along a line in 4-D (wide spread), with a little noise across it.
        let vectors: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                let t = i as f32 / 4.0;
                let wobble = if i % 2 == 0 { 0.05 } else { -0.05 };
                vec![t, t, wobble, 0.0]
            })
            .collect();
        let (points, explained) = project(&vectors);
        assert_eq!(points.len(), 40);
        assert!(explained[0] > 0.99, "{explained:?}");
        assert!(explained[1] < 0.01, "{explained:?}");
        // Neighbours in the data are neighbours on the first axis.
        let gap = (points[1][0] - points[0][0]).abs();
        let far = (points[39][0] - points[0][0]).abs();
        assert!(far > 30.0 * gap, "{gap} {far}");
        assert_eq!(project(&[]).0.len(), 0);
        assert_eq!(project(&[vec![1.0, 2.0]]).0, vec![[0.0, 0.0]]);
    }
}
