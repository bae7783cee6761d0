// Weighted k-NN classification of features, as the reference's knn.py (dinov2/eval/knn.py).
#pragma once

// Scales every row of x[n, D] to unit L2 norm (a zero row stays zero).
void l2_normalize_rows(float *x, int n, int D);

// Rows L2-normalized by the caller; similarity = cosine; the k most similar train rows vote with weight
// exp(sim / T); the class with the largest total wins (ties: the lower class id). pred[n_test].
void knn_predict(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                 int n_classes, int k, float T, int *pred);
