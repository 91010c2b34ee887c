/* The version the extension was built for; vmagent refuses a mismatch. */
#include "vmprobe.h"

const char *vmprobe_version(void) { return VMPROBE_VERSION; }
