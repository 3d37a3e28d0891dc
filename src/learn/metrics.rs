//! Classification metrics. In: true labels and predicted probabilities. Out: accuracy,
//! balanced accuracy, macro F1, ROC AUC (binary; one-vs-rest macro for more classes),
//! per-class precision/recall/F1/support and the confusion matrix.

use serde::Serialize;

use crate::map::heatmap::argmax;

#[derive(Debug, Clone, Serialize)]
pub struct ClassMetrics {
    pub name: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub macro_f1: f64,
    /// None when no class has both positives and negatives.
    pub roc_auc: Option<f64>,
    pub per_class: Vec<ClassMetrics>,
    /// Rows: true class; columns: predicted class.
    pub confusion_matrix: Vec<Vec<usize>>,
}

/// `probs` holds `labels.len() × classes.len()` probabilities, row-major.
pub fn compute(labels: &[usize], probs: &[f32], classes: &[String]) -> Metrics {
    let k = classes.len();
    let n = labels.len();
    let mut cm = vec![vec![0usize; k]; k];
    for (i, &y) in labels.iter().enumerate() {
        cm[y][argmax(&probs[i * k..(i + 1) * k]).0] += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = (0..k)
        .map(|c| {
            let tp = cm[c][c];
            let support: usize = cm[c].iter().sum();
            let predicted: usize = (0..k).map(|r| cm[r][c]).sum();
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                name: classes[c].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    // As scikit-learn: balanced accuracy averages the recall of the classes that occur;
    // macro F1 also counts a class that is only predicted (its F1 is 0), so predicting
    // an absent class costs the average instead of vanishing from it.
    let mean = |keep: &dyn Fn(usize) -> bool, f: &dyn Fn(&ClassMetrics) -> f64| {
        let kept: Vec<f64> = (0..k)
            .filter(|&c| keep(c))
            .map(|c| f(&per_class[c]))
            .collect();
        if kept.is_empty() {
            0.0
        } else {
            kept.iter().sum::<f64>() / kept.len() as f64
        }
    };
    let occurs = |c: usize| per_class[c].support > 0;
    let predicted = |c: usize| (0..k).any(|r| cm[r][c] > 0);
    let roc_auc = if k == 2 {
        auc(
            &(0..n).map(|i| probs[i * 2 + 1]).collect::<Vec<_>>(),
            &labels.iter().map(|&y| y == 1).collect::<Vec<_>>(),
        )
    } else {
        let aucs: Vec<f64> = (0..k)
            .filter_map(|c| {
                auc(
                    &(0..n).map(|i| probs[i * k + c]).collect::<Vec<_>>(),
                    &labels.iter().map(|&y| y == c).collect::<Vec<_>>(),
                )
            })
            .collect();
        (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
    };
    Metrics {
        n,
        accuracy: ratio((0..k).map(|c| cm[c][c]).sum(), n),
        balanced_accuracy: mean(&occurs, &|m| m.recall),
        macro_f1: mean(&|c| occurs(c) || predicted(c), &|m| m.f1),
        roc_auc,
        per_class,
        confusion_matrix: cm,
    }
}

/// Area under the ROC curve: the probability that a random positive scores above a
/// random negative, ties counting half (Mann–Whitney U with average ranks).
pub fn auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&t| positive[order[t]]).count() as f64 * avg_rank;
        i = j + 1;
    }
    Some((rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        // Positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) = 3/4.
        assert_eq!(
            auc(&[0.8, 0.4, 0.6, 0.2], &[true, true, false, false]),
            Some(0.75)
        );
        // A tie counts half: (0.5 = 0.5) → 0.5.
        assert_eq!(auc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn three_class_metrics_by_hand() {
        // True: 0 0 1 1 2 2; predicted: 0 1 1 1 2 0.
        let labels = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 2, 0];
        let probs: Vec<f32> = pred
            .iter()
            .flat_map(|&p| (0..3).map(move |c| if c == p { 0.8 } else { 0.1 }))
            .collect();
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let m = compute(&labels, &probs, &classes);
        assert_eq!(
            m.confusion_matrix,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // Recalls 1/2, 1, 1/2 → balanced 2/3. Precisions 1/2, 2/3, 1.
        assert!((m.balanced_accuracy - 2.0 / 3.0).abs() < 1e-12);
        let f1 = [0.5, 0.8, 2.0 / 3.0];
        for (c, want) in f1.iter().enumerate() {
            assert!((m.per_class[c].f1 - want).abs() < 1e-12, "class {c}");
        }
        assert!((m.macro_f1 - f1.iter().sum::<f64>() / 3.0).abs() < 1e-12);
        assert_eq!(m.per_class[1].support, 2);
    }

    #[test]
    fn a_class_only_predicted_counts_in_macro_f1_not_in_balanced_accuracy() {
        // True: 0 0 0 1; predicted: 0 0 2 1. Class 2 never occurs but is predicted once.
        let labels = [0, 0, 0, 1];
        let pred = [0, 0, 2, 1];
        let probs: Vec<f32> = pred
            .iter()
            .flat_map(|&p| (0..4).map(move |c| if c == p { 0.7 } else { 0.1 }))
            .collect();
        let classes: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let m = compute(&labels, &probs, &classes);
        // Recalls 2/3 and 1 over the classes that occur → 5/6.
        assert!((m.balanced_accuracy - 5.0 / 6.0).abs() < 1e-12);
        // F1: a 0.8 (P 1, R 2/3), b 1, c 0 (predicted, never true); d neither → left out.
        assert!((m.macro_f1 - 1.8 / 3.0).abs() < 1e-12);
    }
}
