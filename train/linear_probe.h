// Linear probe: multinomial logistic regression on frozen features, minimised by full-batch L-BFGS.
#pragma once
#include <stdint.h>

// Features standardized with the training set's mean and std, loss = mean cross-entropy + lambda/2 |W|^2
// (bias not decayed), minimised by full-batch L-BFGS (memory 10, backtracking Armijo line search). lambda
// is chosen among `lambdas` by balanced accuracy on a held-out 20% of the training set (per class, keyed
// by seed), then the probe is refit on the whole training set. pred[n_test]; *chosen_lambda is set.
void linear_probe(const float *train, const int *ytrain, int n_train, const float *test, int n_test, int D,
                  int n_classes, const double *lambdas, int n_lambdas, uint64_t seed, int *pred,
                  double *chosen_lambda);
