# libdino: its sources, the packages it needs and a function that compiles the sources into a static
# library. One list for every copy of the library: CMakeLists.txt builds `dino` (the real one) and the
# instrumented copies of the sanitizer suite (`dino_asan`, `dino_tsan`); tests/fuzz/CMakeLists.txt, the
# clang build of the fuzzers, builds `dino_fuzz` from the same list. Set DINO_SOURCE_DIR (the repository
# root) before including it.

find_package(PkgConfig REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS C)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
pkg_check_modules(YAML REQUIRED IMPORTED_TARGET yaml-0.1)
pkg_check_modules(JSONC REQUIRED IMPORTED_TARGET json-c)
pkg_check_modules(TURBOJPEG REQUIRED IMPORTED_TARGET libturbojpeg)
pkg_check_modules(OPENSLIDE REQUIRED IMPORTED_TARGET openslide)
pkg_check_modules(HDF5 IMPORTED_TARGET hdf5)
find_library(JPEG_LIB jpeg REQUIRED)
find_library(PNG_LIB png)
find_library(TIFF_LIB tiff)
find_package(MPI COMPONENTS C)

# Every .c under common/ model/ model/cpu/ data/ dist/ train/, except the programs.
file(GLOB DINO_LIB_SOURCES CONFIGURE_DEPENDS
  ${DINO_SOURCE_DIR}/common/*.c ${DINO_SOURCE_DIR}/model/*.c ${DINO_SOURCE_DIR}/model/cpu/*.c
  ${DINO_SOURCE_DIR}/data/*.c ${DINO_SOURCE_DIR}/dist/*.c ${DINO_SOURCE_DIR}/train/*.c)
list(FILTER DINO_LIB_SOURCES EXCLUDE REGEX ".*/train/dinotrain\\.c$")

# dino_add_library(name): the library sources as the static library `name`, with the packages above as
# public dependencies and DINO_HAVE_* for the optional ones that were found (not CUDA: CMakeLists.txt adds
# that to `dino` only). Compile and link flags of an instrumented copy are the caller's.
function(dino_add_library name)
  add_library(${name} STATIC ${DINO_LIB_SOURCES})
  target_include_directories(${name} PUBLIC ${DINO_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC PkgConfig::OPENBLAS PkgConfig::YAML PkgConfig::JSONC PkgConfig::TURBOJPEG
    PkgConfig::OPENSLIDE OpenMP::OpenMP_C ${JPEG_LIB} z m pthread)
  if(PNG_LIB)
    target_link_libraries(${name} PUBLIC ${PNG_LIB})
    target_compile_definitions(${name} PUBLIC DINO_HAVE_PNG=1)
  endif()
  if(TIFF_LIB)
    target_link_libraries(${name} PUBLIC ${TIFF_LIB})
    target_compile_definitions(${name} PUBLIC DINO_HAVE_TIFF=1)
  endif()
  if(HDF5_FOUND)
    target_link_libraries(${name} PUBLIC PkgConfig::HDF5)
    target_compile_definitions(${name} PUBLIC DINO_HAVE_HDF5=1)
  endif()
  if(MPI_C_FOUND)
    target_link_libraries(${name} PUBLIC MPI::MPI_C)
    target_compile_definitions(${name} PUBLIC DINO_HAVE_MPI=1)
  endif()
endfunction()
