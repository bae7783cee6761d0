# Programs under the CUDA execution layer besides the test programs (included by CMakeLists.txt in its
# execution-layer section, after the cudaemu_* test programs: uses EMU and EMU_FLAGS from there).
#
# cudaemu_bench_step: tools/bench_step.c (the whole training step) linked with the layer instead of the
# real CUDA code, as the cudaemu_* test programs are. tools/gpu_check.sh --dry runs it at tiny sizes
# (--backend cuda --depth 1 ... --peak-size 256) as the stand-in of the GPU benchmark; without it the dry
# run falls back to bench_step on the CPU backend. Not a ctest case.
add_executable(cudaemu_bench_step ${CMAKE_SOURCE_DIR}/tools/bench_step.c)
target_link_libraries(cudaemu_bench_step PRIVATE dino dino_cudaemu)
target_include_directories(cudaemu_bench_step BEFORE PRIVATE ${EMU}/include ${EMU})
target_compile_definitions(cudaemu_bench_step PRIVATE DINO_CUDAEMU=1)
target_compile_options(cudaemu_bench_step PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${EMU_FLAGS}>)
set_target_properties(cudaemu_bench_step PROPERTIES CXX_STANDARD 17)
