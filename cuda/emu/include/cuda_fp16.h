// deepqsm emu: CUDA's header, emulated on the CPU (cuda/emu/include/dq_emu.h).
#pragma once
#include "dq_emu.h"
