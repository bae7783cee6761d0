# Mutation tests of the CUDA execution layer (included by CMakeLists.txt, in its execution-layer section):
# proof that the layer catches the bugs it claims to. Each mutant is one CUDA source with one exact
# snippet replaced by a bug; the CUDA sources affected are compiled again under the layer with the mutated
# copy first on the include path, linked into test_cuda_ops, and the ctest case cudaemu.mutant.<name> runs
# one test case of it that must FAIL, by the mechanism the mutant is about (a specific message: a test
# that fails for another reason, e.g. a crash or an unrelated check, fails the mutant case too).
#
# How a mutant replaces the original code: the mutated objects are linked as object files, ahead of
# libdino_cudaemu.a. Objects on the link line are always linked; an archive member is pulled only for a
# symbol still undefined, so the archive's original copy of a recompiled source is never pulled (its
# symbols are all defined already) and there is no duplicate definition.
#
# A mutant's snippet must occur exactly once in its source, else configuring fails: an edit of the source
# must not turn a mutant silently into the original program. When that happens, update the mutant below
# (its FROM text, and its expected message if the test changed).
#
# Uses EMU, EMU_FLAGS, EMU_ENV and DINO_CUDA_SOURCES of the including section.

set(MUTANT_DIR ${CMAKE_BINARY_DIR}/cudaemu_mutants)

# Same environment as the other cudaemu tests, less the kernel coverage (a mutant's launches must not
# count), and the layer's schedules pinned to their defaults so that a CUDAEMU_* variable of the caller's
# shell cannot change what a mutant run sees.
set(MUTANT_ENV ${EMU_ENV})
list(FILTER MUTANT_ENV EXCLUDE REGEX "^CUDAEMU_COVERAGE=")
list(APPEND MUTANT_ENV "CUDAEMU_COVERAGE=" "CUDAEMU_STREAMS=delay" "CUDAEMU_ORDER=random" "CUDAEMU_SEED=1")

# test_cuda_ops.c and the harness, compiled once as for cudaemu_cuda_ops, linked into every mutant.
add_library(cudaemu_mutant_main OBJECT ${CMAKE_SOURCE_DIR}/tests/test_cuda_ops.c ${CMAKE_SOURCE_DIR}/tests/harness.c)
target_link_libraries(cudaemu_mutant_main PRIVATE dino) # its include directories and definitions
target_include_directories(cudaemu_mutant_main BEFORE PRIVATE ${EMU}/include ${EMU})
target_compile_definitions(cudaemu_mutant_main PRIVATE DINO_CUDAEMU=1 DINO_SOURCE_DIR="${CMAKE_SOURCE_DIR}")

# The CUDA sources that include `rel` ("model/cuda/x.cuh"), directly or through other headers of
# model/cuda/ and dist/, or that are `rel` itself.
function(cudaemu_mutant_affected rel out)
  file(GLOB headers ${CMAKE_SOURCE_DIR}/model/cuda/*.cuh ${CMAKE_SOURCE_DIR}/model/cuda/*.h
       ${CMAKE_SOURCE_DIR}/dist/*.h)
  set(reached ${rel})
  set(grown TRUE)
  while(grown)
    set(grown FALSE)
    foreach(f ${headers} ${DINO_CUDA_SOURCES})
      file(RELATIVE_PATH frel ${CMAKE_SOURCE_DIR} ${f})
      if(frel IN_LIST reached)
        continue()
      endif()
      file(STRINGS ${f} incs REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
      foreach(inc ${incs})
        string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"]+)\".*" "\\1" inc ${inc})
        if(inc IN_LIST reached)
          list(APPEND reached ${frel})
          set(grown TRUE)
          break()
        endif()
      endforeach()
    endforeach()
  endwhile()
  set(sources "")
  foreach(cu ${DINO_CUDA_SOURCES})
    file(RELATIVE_PATH cu_rel ${CMAKE_SOURCE_DIR} ${cu})
    if(cu_rel IN_LIST reached)
      list(APPEND sources ${cu_rel})
    endif()
  endforeach()
  set(${out} ${sources} PARENT_SCOPE)
endfunction()

# cudaemu_mutant(NAME FILE <path in the source tree> TEST <case of test_cuda_ops> EXPECT <regex>
#                [TIMEOUT <s>])
# The snippet and its replacement are read from the variables MUTANT_FROM and MUTANT_TO (bracket
# arguments: code holds semicolons and quotes that a function argument would not carry intact).
function(cudaemu_mutant name)
  cmake_parse_arguments(M "FINDING" "FILE;TEST;EXPECT;TIMEOUT" "" ${ARGN})
  if(NOT M_TIMEOUT)
    set(M_TIMEOUT 300)
  endif()
  set(src ${CMAKE_SOURCE_DIR}/${M_FILE})
  set_property(DIRECTORY ${CMAKE_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${src})
  file(READ ${src} text)
  string(FIND "${text}" "${MUTANT_FROM}" at)
  set(twice -1)
  if(at GREATER_EQUAL 0)
    math(EXPR after "${at} + 1")
    string(SUBSTRING "${text}" ${after} -1 rest)
    string(FIND "${rest}" "${MUTANT_FROM}" twice)
  endif()
  if(at LESS 0 OR twice GREATER_EQUAL 0)
    if(at LESS 0)
      set(why "is not found")
    else()
      set(why "occurs more than once")
    endif()
    message(FATAL_ERROR "cudaemu mutant ${name}: the snippet it mutates ${why} in ${M_FILE}:\n${MUTANT_FROM}\n"
                        "The source changed: update the mutant in tests/cudaemu/mutants.cmake (its MUTANT_FROM "
                        "text, and its expected message if the test changed) so that it still makes this bug.")
  endif()
  string(REPLACE "${MUTANT_FROM}" "${MUTANT_TO}" text "${text}")
  set(root ${MUTANT_DIR}/${name})
  # copied only when the text differs, so that a reconfigure does not rebuild the mutant
  file(WRITE ${root}/mutated.tmp "${text}")
  configure_file(${root}/mutated.tmp ${root}/${M_FILE} COPYONLY)

  cudaemu_mutant_affected(${M_FILE} affected)
  set(objs "")
  foreach(rel ${affected})
    string(REPLACE "/" "_" stem ${rel})
    set(wrapper ${root}/src/${stem}.cpp)
    file(CONFIGURE OUTPUT ${wrapper} CONTENT "#include \"${rel}\"\n")
    set_source_files_properties(${wrapper} PROPERTIES OBJECT_DEPENDS "${root}/${M_FILE};${src}")
    list(APPEND objs ${wrapper})
  endforeach()
  # the flags of dino_cudaemu, with the mutant's tree ahead of the source tree
  add_library(cudaemu_mutant_${name}_objs OBJECT ${objs})
  set_target_properties(cudaemu_mutant_${name}_objs PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON)
  target_include_directories(cudaemu_mutant_${name}_objs BEFORE PRIVATE ${root} ${EMU}/include ${EMU}
                             ${CMAKE_SOURCE_DIR})
  target_compile_options(cudaemu_mutant_${name}_objs PRIVATE ${EMU_FLAGS} -Wall -Wextra -Wno-unused-parameter
                         -Wno-sign-compare -Werror)
  target_link_libraries(cudaemu_mutant_${name}_objs PRIVATE dino)
  if(MPI_C_FOUND)
    target_link_libraries(cudaemu_mutant_${name}_objs PRIVATE MPI::MPI_C)
    target_compile_definitions(cudaemu_mutant_${name}_objs PRIVATE DINO_HAVE_MPI=1)
  endif()

  set(exe cudaemu_mutant_${name})
  add_executable(${exe} $<TARGET_OBJECTS:cudaemu_mutant_main> $<TARGET_OBJECTS:cudaemu_mutant_${name}_objs>)
  set_target_properties(${exe} PROPERTIES LINKER_LANGUAGE CXX)
  target_link_libraries(${exe} PRIVATE dino dino_cudaemu)

  # Passes on the expected message (whatever the exit status), unless the case reported success
  # ("ok <case>") or something else went wrong as well: a sanitizer report or a finding of the layer
  # ("cudaemu: ...", not "cudaemu note: ...") that this mutant is not about.
  add_test(NAME cudaemu.mutant.${name} COMMAND ${exe} ${M_TEST} WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  # FINDING: the mutant is about a finding of the layer, which EXPECT names (then other findings are not
  # told apart from it: the layer stops at its first)
  if(M_FINDING)
    set(other_findings "")
  else()
    set(other_findings ";(^|\n)cudaemu: ")
  endif()
  set_tests_properties(cudaemu.mutant.${name} PROPERTIES TIMEOUT ${M_TIMEOUT} ENVIRONMENT "${MUTANT_ENV}"
    PASS_REGULAR_EXPRESSION "${M_EXPECT}"
    FAIL_REGULAR_EXPRESSION "(^|\n)ok ${M_TEST}\n;AddressSanitizer;LeakSanitizer;runtime error:${other_findings}")
endfunction()

# ---- the mutants ------------------------------------------------------------------------------------

# A missing barrier: block_sum's warps' partial sums read before every warp has written its own. The
# layer runs each CUDA thread as a fiber up to its next barrier or warp op, so warps read the slots of
# warps that have not run yet (what an earlier block left there): koleo's row norms (block_sum), and so
# its loss, are far off, whatever CUDAEMU_ORDER.
set(MUTANT_FROM [[
    if (lane == 0) sh[w] = v;
    __syncthreads();
    return warp_sum(lane < nw ? sh[lane] : (T)0);]])
set(MUTANT_TO [[
    if (lane == 0) sh[w] = v;
    return warp_sum(lane < nw ? sh[lane] : (T)0);]])
cudaemu_mutant(syncthreads_removed FILE model/cuda/reduce.cuh TEST koleo_kde_fwd_bwd
  EXPECT "FAIL koleo_kde_fwd_bwd \\([^)]*\\): koleo loss: gpu ")

# A wrong leading dimension: linear backward's din = dout W with dout's lda n_in instead of n_out. At the
# first shape (n_in 384 < n_out 1152) the cuBLAS stand-in refuses it as cuBLAS does.
set(MUTANT_FROM [[cuda_gemm_batched(be, 0, 0, rows, n_in, n_out, 1.0f, dout, n_out, 0, W, n_in, 0, 0.0f, din, n_in, 0, 1);]])
set(MUTANT_TO [[cuda_gemm_batched(be, 0, 0, rows, n_in, n_out, 1.0f, dout, n_in, 0, W, n_in, 0, 0.0f, din, n_in, 0, 1);]])
cudaemu_mutant(gemm_wrong_ld FILE model/cuda/matmul.cu TEST linear_vits_vitl_shapes
  EXPECT "dinotrain: cuBLAS error at [^\n]*/matmul\\.cu:[0-9]+: CUBLAS_STATUS_INVALID_VALUE")

# A missing stream dependency: the compute stream no longer waits for the staged upload of the crops.
# Under CUDAEMU_STREAMS=delay nothing then makes the copy stream run before the step's kernels, which
# read the slots' old contents (eager and random runs miss it: the upload happens to run first).
set(MUTANT_FROM [[
    cudaCheck(cudaStreamWaitEvent(c->stream, c->upload_done[ticket], 0));]])
set(MUTANT_TO [[
    (void)c;]])
cudaemu_mutant(upload_wait_removed FILE model/cuda/backend_cuda.cu TEST ssl_step_softmax_koleo_fp32_gemm
  EXPECT "FAIL ssl_step_softmax_koleo_fp32_gemm \\([^)]*\\): staged \\+ recomputed GPU steps: the (losses|parameters) changed")

# A launch beyond the device's limits: colsum's row blocks over grid y's 65535, refused at the launch
# and reported by the backend's cudaCheckLaunch.
set(MUTANT_FROM [[dim3 grid(ceil_div(cols, COLSUM_COLS), nblk)]])
set(MUTANT_TO [[dim3 grid(ceil_div(cols, COLSUM_COLS), nblk + 65535)]])
cudaemu_mutant(grid_y_65536 FILE model/cuda/cuda_ops.cuh TEST layernorm_fwd_bwd
  EXPECT "cudaemu note: launch of colsum_partial_kernel at [^\n]* refused: [^\n]*: grid y or z over 65535\ndinotrain: CUDA error at [^\n]*: invalid configuration argument")

# A missing stream dependency: the upload on the copy stream no longer waits for the zero-fill of the
# buffers allocated on the compute stream. CUDAEMU_STREAMS=delay cannot show this one: it runs the copy
# stream only when the compute stream waits for the upload, after the zero-fill queued there before.
# The test's own rerun under CUDAEMU_STREAMS=random (the staged steps in the layer's other orders, built
# with DINO_CUDAEMU only) runs the upload before a zero-fill queued ahead of it, which then wipes crops.
set(MUTANT_FROM [[
    cudaCheck(cudaStreamWaitEvent(c->copy_stream, c->alloc_done, 0));]])
set(MUTANT_TO "")
cudaemu_mutant(copy_stream_alloc_wait_removed FILE model/cuda/backend_cuda.cu TEST ssl_step_softmax_koleo_fp32_gemm
  EXPECT "FAIL ssl_step_softmax_koleo_fp32_gemm \\([^)]*\\): staged GPU steps change with the layer's thread / stream order")

# A host read inside a capture: with graphs on, to_host no longer ends the open segment before its copy
# to the (pageable) host buffer and the host's wait. CUDA refuses that copy on a capturing stream; the
# layer reports it at the first read-back of the graph-mode SSL steps.
set(MUTANT_FROM [[
    cuda_graph_pause(be);
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda_stream(be)));]])
set(MUTANT_TO [[
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cuda_stream(be)));]])
cudaemu_mutant(graph_host_read_inside_capture FILE model/cuda/backend_cuda.cu TEST ssl_steps_cuda_graphs_same_bits FINDING
  EXPECT "cudaemu: cudaMemcpyAsync to pageable host memory [^\n]* on a capturing stream: CUDA refuses it")
# Replay mode resets the page-locked staging when it launches a segment instead of after a host wait (as if
# the graph took its host inputs along at the launch): the next segment's inputs overwrite those of a
# launched graph that has not run yet. The layer compares a graph's page-locked sources at its run with
# what they held at its launch.
set(MUTANT_FROM [[
    c->graph_stats.nodes += (long long)nodes;
}]])
set(MUTANT_TO [[
    c->graph_stats.nodes += (long long)nodes;
    if (c->graphs >= CUDA_GRAPHS_REPLAY) c->stage_used = 0;
}]])
cudaemu_mutant(graph_replay_staging_reused FILE model/cuda/graphs.cu TEST cuda_graphs_replay_staging_per_segment FINDING
  EXPECT "cudaemu: cudaGraphLaunch: node [0-9]+ [^\n]* the host rewrote them after the launch, before the graph ran")
# A setting that changes an op's kernels without changing its arguments (the attention path) keeps the
# cached segments: the next identical attention_fwd call would replay the other path's kernels. Verify
# mode records it again and finds another graph than the cached one.
set(MUTANT_FROM [[
    cuda_host_wait(be);
    cuda_replay_forget(cuda_impl(be));
    cuda_graph_resume(be);]])
set(MUTANT_TO [[
    cuda_host_wait(be);
    cuda_graph_resume(be);]])
cudaemu_mutant(graph_replay_setting_kept FILE model/cuda/backend_cuda.cu TEST cuda_graphs_replay_setting_change_records_anew
  EXPECT "dinotrain: cuda graphs \\(verify\\): a segment with the signature of a cached one recorded")
# A missing barrier between the flash forward's K/V tile load into shared memory and its use: each
# thread stores its share of the tile, then the warps' wmma loads read the whole tile. Under the layer a
# thread runs from the previous barrier to its first wmma load in one stretch, so the warps read elements
# that threads later in the order have not stored yet (the previous tile's, or the previous block's):
# the attention output is off by the order of the values themselves (whatever CUDAEMU_ORDER).
set(MUTANT_FROM [[
        load_tile<DH, LDS>(sV, v, H3, j0, FLASH_BC, T);
        __syncthreads();
        // S = Q K^T (unscaled), 16 x FLASH_BC]])
set(MUTANT_TO [[
        load_tile<DH, LDS>(sV, v, H3, j0, FLASH_BC, T);
        // S = Q K^T (unscaled), 16 x FLASH_BC]])
cudaemu_mutant(flash_kv_tile_syncthreads_removed FILE model/cuda/attention_flash.cu TEST flash_attention_dh64
  EXPECT "FAIL flash_attention_dh64 \\([^)]*\\): flash_fwd\\.out: normwise relative error")

# The bf16 weight copy (model/cuda/weight_copy.cu) left stale: AdamW updates the fp32 master but no longer
# stores its bf16 rounding into the copy that the next step's GEMMs read. The verifier of the copies finds
# the weights whose copy is not the rounding of their master (the SSL steps' check mode would exit).
set(MUTANT_FROM [[        if (p16) p16[i] = __float2bfloat16(pn);]])
set(MUTANT_TO [[        (void)p16;]])
cudaemu_mutant(adamw_weight_copy_not_written FILE model/cuda/optim_ops.cu TEST weight_copy_kept_current_by_every_write
  EXPECT "FAIL weight_copy_kept_current_by_every_write \\([^)]*\\): after adamw: the bf16 copy of [0-9]+ weights is not")

# The same for a write through the backend's memory ops: to_device into a parameter buffer (checkpoint and
# initial weights) no longer converts the range it wrote. The SSL steps in check mode exit at the first
# GEMM that reads the stale copy.
set(MUTANT_FROM [[    cuda_param_written(be, dst, bytes); // weights loaded: their bf16 copy]])
set(MUTANT_TO [[    // (mutant: no refresh)]])
cudaemu_mutant(to_device_weight_copy_not_refreshed FILE model/cuda/backend_cuda.cu TEST weight_copy_ssl_steps_same_bits
  EXPECT "cuda backend: the bf16 weight copy of [0-9]+ of the [0-9]+ weights at float [0-9]+ of a parameter buffer")

# A fused epilogue that no longer rounds where the unfused kernels do: linear_gelu_fwd's GELU taken of the
# fp32 acc + b instead of pre as stored in bf16. A fraction of a bf16 ulp from the right values, but no
# longer the unfused sequence's bits, which the fused-vs-unfused case demands.
set(MUTANT_FROM [[
        act_st(act, i, gelu_erf(v));]])
set(MUTANT_TO [[
        act_st(act, i, gelu_erf(acc[i] + b[i % n]));]])
cudaemu_mutant(fused_gelu_of_unrounded_pre FILE model/cuda/matmul.cu TEST fused_epilogues_equal_unfused
  EXPECT "FAIL fused_epilogues_equal_unfused \\([^)]*\\): fused pre/act differ from the unfused switch-off path \\(pre equal, act differs\\)")
