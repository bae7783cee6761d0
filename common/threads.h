// Thread runtime settings shared by the programs.
#pragma once

// OpenBLAS (pthreads) and our OpenMP team share the cores. With libgomp's default active waiting, idle
// OpenMP threads spin and steal the cores from OpenBLAS's threads between parallel regions: on the 2-core
// build machine a ViT-S step took 5.4 s instead of 3.5 s, and the demo ran at 1.5 instead of 110 images/s
// next to the loader's threads. libgomp reads OMP_WAIT_POLICY when it loads, so this sets "passive" and
// re-executes the program (argv as given), unless the user chose a policy. Call it first thing in main().
void dino_prefer_passive_openmp(char **argv);
