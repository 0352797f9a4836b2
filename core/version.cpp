#include "core/version.h"

#ifndef HYSIM_VERSION
#define HYSIM_VERSION "unknown"
#endif
#ifndef HYSIM_GIT_HASH
#define HYSIM_GIT_HASH "unknown"
#endif

namespace hysim {
const char* version_string() { return HYSIM_VERSION; }
const char* git_hash() { return HYSIM_GIT_HASH; }
}  // namespace hysim
