# CMake toolchain file: cross-compile cordon for linux-arm64 on an x86_64 Debian/Ubuntu host.
#   apt-get install g++-aarch64-linux-gnu binutils-aarch64-linux-gnu
# Used by scripts/prebuild.mjs (cmake-js -> cmake -DCMAKE_TOOLCHAIN_FILE=this file).
# The addon only needs the Node-API headers (no node binary or libnode to link against: Node-API
# symbols resolve at load time from the running node), so no arm64 sysroot beyond the cross
# compiler's own /usr/aarch64-linux-gnu is needed.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CORDON_CROSS_PREFIX aarch64-linux-gnu- CACHE STRING "prefix of the cross tools")
set(CMAKE_C_COMPILER ${CORDON_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${CORDON_CROSS_PREFIX}g++)
set(CMAKE_STRIP ${CORDON_CROSS_PREFIX}strip CACHE FILEPATH "strip")
set(CMAKE_AR ${CORDON_CROSS_PREFIX}ar CACHE FILEPATH "ar")
set(CMAKE_RANLIB ${CORDON_CROSS_PREFIX}ranlib CACHE FILEPATH "ranlib")

# Look for libraries and headers only in the target's root; programs (node, cmake) on the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
