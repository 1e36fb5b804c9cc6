// cooperative_groups.h on the cuda-emulator: not emulated (grid-wide and
// warp-level collectives need the hardware's thread model), so a kernel that
// starts using it fails to build on the CPU with this message.
#error "cuda_on_cpu.h: cooperative groups (<cooperative_groups.h>) cannot be emulated on the CPU"
