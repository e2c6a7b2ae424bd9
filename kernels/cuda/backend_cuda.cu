/*
 * backend_cuda.cu — the CUDA backend's op table, device selection, memory,
 * host transfers and weight preparation (see cuda.h, backend.h).
 *
 * Memory is plain cudaMalloc (never managed memory) and every op is
 * enqueued on one stream owned by the backend; nothing here synchronises
 * except sync, download_f32 (the host reads the result at once),
 * weight_prepare (load time) and free (cudaFree does).  Errors of ops are
 * recorded in be->err (first one wins) and returned by sync, which then
 * clears them.
 *
 * Weights: weight_prepare copies a [rows, cols] host matrix (row stride
 * ld, F32/F16/BF16) into a dense device matrix of the activation dtype
 * (ld = cols), converting on the device through a bounded staging buffer,
 * and pins the matrix shape's GEMM algorithm (matmul.cu).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/comm_nccl.h"
#include "kernels/cuda/common.cuh"

extern "C" {
#include "common/log.h"
}

#define W_STAGE_BYTES ((size_t)64 << 20)    /* weight conversion staging */
#define ATTN_WS_BYTES ((size_t)64 << 20)    /* attention partials (attention.cu) */
#define BLAS_WS_BYTES ((size_t)32 << 20)    /* cuBLAS workspace */
#define F32_STAGE_FLOATS ((size_t)2 << 20)  /* F32 transfers of 16-bit activations, a chunk at a time */

llmq_status cuda_fail(llmq_backend *be, llmq_status code, const char *fmt, ...) {
    if (be->err.code != LLMQ_OK) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err.msg, sizeof be->err.msg, fmt, ap);
    va_end(ap);
    be->err.code = code;
    return code;
}

/* ------------------------------------------------------------ memory */

void *cuda_dev_malloc(llmq_backend *be, size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
    if (e == cudaSuccess) return p;
    (void)cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    (void)cudaGetLastError();
    cuda_fail(be, LLMQ_ERR_NOMEM, "cudaMalloc of %.1f MiB for %s failed (%s); %.1f of %.1f MiB free on %s",
              bytes / 1048576.0, what, cudaGetErrorString(e), fr / 1048576.0, tot / 1048576.0,
              cuda_impl_of(be)->name);
    return NULL;
}

static void *cu_alloc(llmq_backend *be, size_t bytes) {
    void *p = cuda_dev_malloc(be, bytes, "a buffer");
    if (!p) return NULL;
    if (cudaMemsetAsync(p, 0, bytes ? bytes : 256, cuda_impl_of(be)->stream) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(p);
        cuda_fail(be, LLMQ_ERR_BACKEND, "cudaMemsetAsync of a new buffer failed");
        return NULL;
    }
    return p;
}

static void cu_free(llmq_backend *be, void *p) {
    if (p) CUDA_TRY_V(be, cudaFree(p));
}

static void cu_upload(llmq_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    /* From pageable memory the call returns once src has been staged, so the
     * caller may reuse src at once; the copy is ordered with the ops. */
    CUDA_TRY_V(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cuda_impl_of(be)->stream));
}

/* F32 transfers of 16-bit activations convert on the device through the
 * fixed F32 staging buffer (F32_STAGE_FLOATS, allocated at create so that
 * nothing is allocated after the KV pool took the rest of the memory), a
 * chunk at a time.  A device-to-pageable copy returns once done and a
 * pageable-to-device copy once its source is staged, so each chunk may reuse
 * the staging buffer without a further wait. */
static void cu_download_f32(llmq_backend *be, float *dst, const void *src, size_t n) {
    cuda_impl *impl = cuda_impl_of(be);
    if (!n) return;
    if (be->act_dt == LLMQ_F32) {
        CUDA_TRY_V(be, cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, impl->stream));
    } else {
        const size_t es = llmq_dtype_size(be->act_dt);
        for (size_t i = 0; i < n; i += impl->f32_stage_n) {
            const size_t c = n - i < impl->f32_stage_n ? n - i : impl->f32_stage_n;
            cuda_convert(be, impl->f32_stage, LLMQ_F32, (const char *)src + i * es, be->act_dt, c);
            CUDA_TRY_V(be, cudaMemcpyAsync(dst + i, impl->f32_stage, c * sizeof(float), cudaMemcpyDeviceToHost,
                                           impl->stream));
        }
    }
    CUDA_TRY_V(be, cudaStreamSynchronize(impl->stream));
}

static void cu_upload_f32(llmq_backend *be, void *dst, const float *src, size_t n) {
    cuda_impl *impl = cuda_impl_of(be);
    if (!n) return;
    if (be->act_dt == LLMQ_F32) {
        cu_upload(be, dst, src, n * sizeof(float));
        return;
    }
    const size_t es = llmq_dtype_size(be->act_dt);
    for (size_t i = 0; i < n; i += impl->f32_stage_n) {
        const size_t c = n - i < impl->f32_stage_n ? n - i : impl->f32_stage_n;
        CUDA_TRY_V(be, cudaMemcpyAsync(impl->f32_stage, src + i, c * sizeof(float), cudaMemcpyHostToDevice,
                                       impl->stream));
        cuda_convert(be, (char *)dst + i * es, be->act_dt, impl->f32_stage, LLMQ_F32, c);
    }
}

/* ------------------------------------------------------------ weights */

static llmq_status cu_weight_prepare(llmq_backend *be, be_weight *out, const be_weight *in) {
    cuda_impl *impl = cuda_impl_of(be);
    if (llmq_dtype_is_quant(in->dt)) return cuda_qweight_prepare(be, out, in);
    const size_t rows = (size_t)in->rows, cols = (size_t)in->cols, ld = be_weight_ld(in);
    const size_t in_es = llmq_dtype_size(in->dt), out_es = llmq_dtype_size(be->act_dt);
    if (in->rows <= 0 || in->cols <= 0 || ld < cols || !in_es)
        return cuda_fail(be, LLMQ_ERR_INVALID, "weight_prepare: bad matrix [%d, %d] ld %zu dtype %d", in->rows,
                         in->cols, ld, (int)in->dt);
    char what[96];
    snprintf(what, sizeof what, "a [%zu, %zu] %s weight", rows, cols, llmq_dtype_name(be->act_dt));
    void *dev = cuda_dev_malloc(be, rows * cols * out_es, what);
    if (!dev) return be->err.code;
    cudaError_t e;
    if (in->dt == be->act_dt) { /* same type: one strided copy straight into place */
        e = cudaMemcpy2DAsync(dev, cols * out_es, in->data, ld * in_es, cols * in_es, rows, cudaMemcpyHostToDevice,
                              impl->stream);
        if (e != cudaSuccess) {
            cudaFree(dev);
            return cuda_fail(be, LLMQ_ERR_BACKEND, "weight upload: %s", cudaGetErrorString(e));
        }
    } else { /* convert through the staging buffer, a band of rows at a time */
        const size_t band = W_STAGE_BYTES / (cols * in_es) > 0 ? W_STAGE_BYTES / (cols * in_es) : 1;
        if (impl->w_stage && band * cols * in_es > impl->w_stage_bytes) { /* a row wider than the staging */
            cudaFree(impl->w_stage);
            impl->w_stage = NULL;
        }
        if (!impl->w_stage) {
            impl->w_stage = cuda_dev_malloc(be, band * cols * in_es, "the weight staging buffer");
            if (!impl->w_stage) {
                cudaFree(dev);
                return be->err.code;
            }
            impl->w_stage_bytes = band * cols * in_es;
        }
        for (size_t r0 = 0; r0 < rows; r0 += band) {
            const size_t nr = rows - r0 < band ? rows - r0 : band;
            e = cudaMemcpy2DAsync(impl->w_stage, cols * in_es, (const char *)in->data + r0 * ld * in_es, ld * in_es,
                                  cols * in_es, nr, cudaMemcpyHostToDevice, impl->stream);
            if (e != cudaSuccess) {
                cudaFree(dev);
                return cuda_fail(be, LLMQ_ERR_BACKEND, "weight upload: %s", cudaGetErrorString(e));
            }
            cuda_convert(be, (char *)dev + r0 * cols * out_es, be->act_dt, impl->w_stage, in->dt, nr * cols);
            /* the next band overwrites the staging: let the conversion finish */
            if (cudaStreamSynchronize(impl->stream) != cudaSuccess) break;
        }
    }
    e = cudaStreamSynchronize(impl->stream);
    if (e != cudaSuccess || be->err.code != LLMQ_OK) {
        cudaFree(dev);
        /* an op's error (the conversion's launch) is already on be and is the cause */
        if (be->err.code != LLMQ_OK) return be->err.code;
        return cuda_fail(be, LLMQ_ERR_BACKEND, "weight_prepare: CUDA error %s (%s) while uploading a [%zu, %zu] weight",
                         cudaGetErrorName(e), cudaGetErrorString(e), rows, cols);
    }
    out->data = dev;
    out->dt = be->act_dt;
    out->rows = in->rows;
    out->cols = in->cols;
    out->ld = in->cols;
    return cuda_gemm_plan_prepare(be, in->rows, in->cols);
}

static void cu_weight_release(llmq_backend *be, be_weight *w) {
    if (!w || !w->data) return;
    if (llmq_dtype_is_quant(w->dt)) {
        cuda_qweight_release(be, w);
        return;
    }
    CUDA_TRY_V(be, cudaFree((void *)w->data));
    w->data = NULL;
}

static void cu_mem_info(llmq_backend *be, size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = *total_bytes = 0;
    CUDA_TRY_V(be, cudaMemGetInfo(free_bytes, total_bytes));
}

static llmq_status cu_sync(llmq_backend *be, llmq_err *err) {
    cudaError_t e = cudaStreamSynchronize(cuda_impl_of(be)->stream);
    if (e != cudaSuccess)
        cuda_fail(be, LLMQ_ERR_BACKEND, "CUDA error %s (%s) while running the step's kernels", cudaGetErrorName(e),
                  cudaGetErrorString(e));
    llmq_status st = be->err.code;
    if (st != LLMQ_OK) {
        if (err) *err = be->err;
        llmq_err_clear(&be->err);
    }
    return st;
}

/* The group's NCCL communicator on this backend's stream: rank 0 makes the
 * unique id and hands it to the others over the host communicator, under the
 * start-up deadline (comm_nccl.h); its scratch is reserved at once. */
static llmq_comm *cu_group_comm(llmq_backend *be, llmq_comm *host, size_t max_reduce, llmq_err *err) {
    llmq_comm *c = comm_nccl_group_create(host, cuda_backend_stream(be), 0, err);
    if (!c || !max_reduce) return c;
    const comm_dtype cdt = be->act_dt == LLMQ_F16 ? COMM_F16 : be->act_dt == LLMQ_BF16 ? COMM_BF16 : COMM_F32;
    if (comm_nccl_reserve(c, max_reduce, cdt, 0)) {
        llmq_err_set(err, c->err.code, "%s", c->err.msg);
        comm_destroy(c);
        return NULL;
    }
    return c;
}

static void cu_destroy(llmq_backend *be);

static const be_ops cuda_ops = {
    .name = "cuda",
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download_f32 = cu_download_f32,
    .upload_f32 = cu_upload_f32,
    .weight_prepare = cu_weight_prepare,
    .weight_release = cu_weight_release,
    .sync = cu_sync,
    .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm,
    .add_rmsnorm = cuda_add_rmsnorm,
    .matmul = cuda_matmul,
    .rope = cuda_rope,
    .kv_store = cuda_kv_store,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .gather_rows = cuda_gather_rows,
    .add = cuda_add,
    .layernorm = cuda_layernorm,
    .gelu = cuda_gelu,
    .moe = cuda_moe,
    .group_comm = cu_group_comm,
    .mem_info = cu_mem_info,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .destroy = cu_destroy,
    .kv_dtypes = 0, /* the KV cache in act_dt only (backend.h) */
};

/* ------------------------------------------------------------ lifetime */

static llmq_status pick_dtype(int sm, llmq_dtype *out, llmq_err *err) {
    const char *env = getenv("LLMQ_CUDA_DTYPE");
    if (!env || !*env) {
        *out = sm >= 80 ? LLMQ_BF16 : LLMQ_F16;
        return LLMQ_OK;
    }
    if (!strcmp(env, "f32") || !strcmp(env, "F32")) *out = LLMQ_F32;
    else if (!strcmp(env, "f16") || !strcmp(env, "F16")) *out = LLMQ_F16;
    else if (!strcmp(env, "bf16") || !strcmp(env, "BF16")) *out = LLMQ_BF16;
    else return llmq_err_set(err, LLMQ_ERR_INVALID, "LLMQ_CUDA_DTYPE=%s: expected f32, f16 or bf16", env);
    if (*out == LLMQ_BF16 && sm < 80)
        return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "LLMQ_CUDA_DTYPE=bf16 needs sm_80 or newer (this GPU is sm_%d)",
                            sm);
    return LLMQ_OK;
}

extern "C" llmq_backend *cuda_backend_create(llmq_err *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        int drv = 0, rt = 0;
        cudaDriverGetVersion(&drv);
        cudaRuntimeGetVersion(&rt);
        const char *why = e == cudaErrorInsufficientDriver && drv == 0 ? "no NVIDIA driver is loaded"
                          : e == cudaErrorInsufficientDriver        ? "the NVIDIA driver is older than this CUDA runtime"
                          : e == cudaErrorNoDevice || e == cudaSuccess ? "no GPU is visible (CUDA_VISIBLE_DEVICES?)"
                                                                       : "the GPU cannot be used";
        llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "no CUDA device: %s (cudaGetDeviceCount: %s; driver API %d, runtime %d)",
                     why, e != cudaSuccess ? cudaGetErrorString(e) : "0 devices", drv, rt);
        (void)cudaGetLastError();
        return NULL;
    }
    int dev = 0;
    const char *env = getenv("LLMQ_CUDA_DEVICE");
    if (env && *env) dev = atoi(env);
    if (dev < 0 || dev >= count) {
        llmq_err_set(err, LLMQ_ERR_INVALID, "LLMQ_CUDA_DEVICE=%d but %d CUDA device(s) are visible", dev, count);
        return NULL;
    }
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(dev)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess) {
        llmq_err_set(err, LLMQ_ERR_BACKEND, "no CUDA device: device %d cannot be used: %s", dev, cudaGetErrorString(e));
        return NULL;
    }
    const int sm = prop.major * 10 + prop.minor;
    if (sm < 75) {
        llmq_err_set(err, LLMQ_ERR_UNSUPPORTED, "CUDA device %d (%s) is sm_%d; llmq needs sm_75 or newer", dev,
                     prop.name, sm);
        return NULL;
    }
    llmq_dtype act;
    if (pick_dtype(sm, &act, err)) return NULL;

    llmq_backend *be = (llmq_backend *)calloc(1, sizeof *be);
    cuda_impl *impl = (cuda_impl *)calloc(1, sizeof *impl);
    if (!be || !impl) {
        free(be);
        free(impl);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "cuda backend: out of memory");
        return NULL;
    }
    be->ops = &cuda_ops;
    be->act_dt = act;
    be->kv_dt = act; /* the CUDA kernels keep KV in act_dt only (ops.kv_dtypes 0) */
    be->impl = impl;
    impl->device = dev;
    impl->sm = sm;
    impl->n_sms = prop.multiProcessorCount;
    snprintf(impl->name, sizeof impl->name, "%s", prop.name);
    const char *gm = getenv("LLMQ_CUDA_GEMM");
    impl->gemm_pinned = !(gm && !strcmp(gm, "fast"));
    const char *pin = getenv("LLMQ_CUDA_GEMM_PIN_N");
    impl->gemm_pin_n = pin && atoi(pin) > 0 ? atoi(pin) : 64;
    const char *graphs = getenv("LLMQ_CUDA_GRAPHS");
    impl->graphs_off = graphs && !strcmp(graphs, "0");

    const char *what = "cudaStreamCreate";
    cublasStatus_t bs = CUBLAS_STATUS_SUCCESS;
    e = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) {
        what = "cudaMalloc of the workspaces";
        impl->blas_ws_bytes = BLAS_WS_BYTES;
        impl->attn_ws_bytes = ATTN_WS_BYTES;
        const char *ws = getenv("LLMQ_CUDA_ATTN_WS_KB");
        if (ws && atol(ws) > 0) impl->attn_ws_bytes = (size_t)atol(ws) << 10;
        impl->f32_stage_n = F32_STAGE_FLOATS;
        e = cudaMalloc(&impl->blas_ws, impl->blas_ws_bytes);
        if (e == cudaSuccess) e = cudaMalloc((void **)&impl->attn_ws, impl->attn_ws_bytes);
        if (e == cudaSuccess) e = cudaMalloc((void **)&impl->f32_stage, impl->f32_stage_n * sizeof(float));
    }
    if (e == cudaSuccess) {
        what = "cublasCreate";
        bs = cublasCreate(&impl->blas);
        if (bs == CUBLAS_STATUS_SUCCESS) what = "cublasSetStream", bs = cublasSetStream(impl->blas, impl->stream);
        if (bs == CUBLAS_STATUS_SUCCESS)
            what = "cublasSetWorkspace", bs = cublasSetWorkspace(impl->blas, impl->blas_ws, impl->blas_ws_bytes);
        /* FP32 accumulation everywhere: no reduced-precision split-K reductions */
        if (bs == CUBLAS_STATUS_SUCCESS)
            what = "cublasSetMathMode",
            bs = cublasSetMathMode(impl->blas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                              CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
        if (bs == CUBLAS_STATUS_SUCCESS) what = "cublasLtCreate", bs = cublasLtCreate(&impl->lt);
    }
    if (e != cudaSuccess || bs != CUBLAS_STATUS_SUCCESS) {
        llmq_err_set(err, LLMQ_ERR_BACKEND, "cuda backend on %s: %s failed: %s", impl->name, what,
                     e != cudaSuccess ? cudaGetErrorString(e) : cublasGetStatusString(bs));
        cu_destroy(be);
        return NULL;
    }
    log_info("cuda: device %d: %s (sm_%d, %d SMs, %.1f GiB), activations %s, GEMMs %s, step graphs %s", dev,
             impl->name, sm, impl->n_sms, prop.totalGlobalMem / 1073741824.0, llmq_dtype_name(act),
             impl->gemm_pinned ? "pinned" : "fast", impl->graphs_off ? "off" : "on");
    return be;
}

/* be_ops.destroy: waits for the stream, then frees what create made (also
 * after a create that failed half-way: every handle is checked). */
static void cu_destroy(llmq_backend *be) {
    cuda_impl *impl = cuda_impl_of(be);
    if (impl) {
        if (impl->stream) cudaStreamSynchronize(impl->stream);
        if (impl->lt) cublasLtDestroy(impl->lt);
        if (impl->blas) cublasDestroy(impl->blas);
        cudaFree(impl->blas_ws);
        cudaFree(impl->attn_ws);
        cudaFree(impl->f32_stage);
        cudaFree(impl->w_stage);
        if (impl->stream) cudaStreamDestroy(impl->stream);
        cuda_gemm_plans_free(impl);
        cuda_graphs_free(impl);
        free(impl);
    }
    free(be);
}

extern "C" void *cuda_backend_stream(llmq_backend *be) { return (void *)cuda_impl_of(be)->stream; }

extern "C" void cuda_backend_get_info(llmq_backend *be, cuda_backend_info *out) {
    cuda_impl *impl = cuda_impl_of(be);
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", impl->name);
    out->sm = impl->sm;
    out->n_sms = impl->n_sms;
    cudaMemGetInfo(&out->mem_free, &out->mem_total);
    int clock_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, impl->device) == cudaSuccess &&
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, impl->device) == cudaSuccess)
        out->peak_bw_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9; /* double data rate */
    int optin = 0;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, impl->device) == cudaSuccess)
        out->smem_optin = (size_t)optin;
    out->attn_ws_bytes = impl->attn_ws_bytes;
    (void)cudaGetLastError();
    out->gemm_pinned = impl->gemm_pinned;
    out->gemm_calls = impl->gemm_calls;
    out->gemm_fallbacks = impl->gemm_fallbacks;
    out->graphs_on = !impl->graphs_off;
    out->graphs_recorded = impl->graphs_recorded;
    out->graph_replays = impl->graph_replays;
}

/* One pass of a grid-stride sum of 16-byte words (the result is kept so
 * that the loads are not optimised away). */
__global__ void bw_read_kernel(const uint4 *p, size_t n, unsigned *sink) {
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) *sink = acc; /* practically never: keeps the loads */
}

extern "C" double cuda_backend_measure_bw(llmq_backend *be, size_t bytes) {
    cuda_impl *impl = cuda_impl_of(be);
    void *buf = NULL;
    unsigned *sink = NULL;
    cudaEvent_t a = NULL, b = NULL;
    double best = 0;
    const size_t n = bytes / 16;
    if (cudaMalloc(&buf, n * 16) != cudaSuccess || cudaMalloc((void **)&sink, 4) != cudaSuccess ||
        cudaMemsetAsync(buf, 1, n * 16, impl->stream) != cudaSuccess || cudaEventCreate(&a) != cudaSuccess ||
        cudaEventCreate(&b) != cudaSuccess)
        goto out;
    for (int r = 0; r < 6; r++) {
        float ms = 0;
        cudaEventRecord(a, impl->stream);
        llmq_launch(bw_read_kernel, impl->n_sms * 8, 512, 0, impl->stream, (const uint4 *)buf, n, sink);
        cudaEventRecord(b, impl->stream);
        if (cudaEventSynchronize(b) != cudaSuccess || cudaEventElapsedTime(&ms, a, b) != cudaSuccess) goto out;
        if (r > 0 && ms > 0 && n * 16 / (ms * 1e-3) / 1e9 > best) best = n * 16 / (ms * 1e-3) / 1e9;
    }
out:
    (void)cudaGetLastError();
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    cudaFree(buf);
    cudaFree(sink);
    return best;
}
