#pragma once
namespace hysim {
const char* version_string();  // "0.1.0"
const char* git_hash();        // commit the binary was configured at ("unknown" outside git)
}  // namespace hysim
