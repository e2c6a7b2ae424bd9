/*
 * emu_nccl.cc — the NCCL subset of the emulated device (first version: every
 * function defined so that the emulated build links; the transport follows).
 */
#include <nccl.h>

#include "kernels/cuda/emu/emu_internal.hh"

extern "C" {
ncclResult_t ncclGetUniqueId(ncclUniqueId *) { return ncclInternalError; }
ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int, ncclUniqueId, int, ncclConfig_t *) {
    if (comm) *comm = nullptr;
    return ncclInternalError;
}
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int, ncclUniqueId, int) {
    if (comm) *comm = nullptr;
    return ncclInternalError;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t *e) {
    if (e) *e = ncclInternalError;
    return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t) { return ncclSuccess; }
ncclResult_t ncclCommFinalize(ncclComm_t) { return ncclSuccess; }
ncclResult_t ncclCommDestroy(ncclComm_t) { return ncclSuccess; }
ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }
ncclResult_t ncclSend(const void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) { return ncclInternalError; }
ncclResult_t ncclRecv(void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) { return ncclInternalError; }
ncclResult_t ncclAllGather(const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t) {
    return ncclInternalError;
}
ncclResult_t ncclBroadcast(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) {
    return ncclInternalError;
}
ncclResult_t ncclAllReduce(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t) {
    return ncclInternalError;
}
const char *ncclGetErrorString(ncclResult_t) { return "emulated NCCL: not implemented yet"; }
const char *ncclGetLastError(ncclComm_t) { return "emulated NCCL: not implemented yet"; }
}
