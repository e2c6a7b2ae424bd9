/*
 * graph.cu — step graphs: the ops of a decode step recorded once per key
 * (CUDA stream capture) and replayed as one cudaGraphLaunch afterwards
 * (semantics: be_ops.graph_begin / graph_end in backend.h).
 *
 * Why.  A decode step of an 8B model is ~450 kernels and GEMMs, each a few
 * microseconds of launch work on the host, while the step reads its weights
 * in a few milliseconds; at batch 1 the launches are a large part of the
 * step.  A replay is one launch.
 *
 * What makes a replay the same step.  The engine keeps every buffer where
 * it is for its whole life (activations, KV cache, index arrays, weights,
 * this backend's workspaces), uploads a step's indices into those buffers
 * before graph_begin, and gives a key standing for the rest of the ops'
 * arguments (batch size, rows with logits, block-table width).  The
 * recording therefore holds pointers and scalars that are right for every
 * step of that key; only the buffers' contents change.  The ops of a
 * recording are the ops an eager step runs, in the same order with the same
 * launch shapes, so a replay gives the same bits (tests/gpu checks it).
 *
 * Life of a key: first step eager (a warm-up that also performs the ops'
 * one-time work, such as cudaFuncSetAttribute), second step recorded and
 * run, later steps replayed.  At most CG_MAX keys are recorded; others run
 * eagerly.  A recording that fails (CUDA refuses the capture or the
 * instantiation, or an op fails while it is recorded) turns graphs off for
 * the backend with a warning; the engine then runs that step again eagerly.  LLMQ_CUDA_GRAPHS=0 turns them off from the start.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.cuh"

extern "C" {
#include "common/log.h"
}

#define CG_MAX 512 /* recorded keys at most (batch sizes x table widths in use) */

/* The slot of key, or the free slot where it would go (NULL: the table is full). */
static cuda_graph *slot_of(cuda_impl *impl, uint64_t key) {
    for (int i = 0; i < impl->n_graphs; i++)
        if (impl->graphs[i].key == key) return &impl->graphs[i];
    if (impl->n_graphs == CG_MAX) return NULL;
    if (impl->n_graphs == impl->cap_graphs) {
        const int cap = impl->cap_graphs ? 2 * impl->cap_graphs : 16;
        cuda_graph *g = (cuda_graph *)realloc(impl->graphs, (size_t)cap * sizeof *g);
        if (!g) return NULL;
        impl->graphs = g;
        impl->cap_graphs = cap;
    }
    cuda_graph *g = &impl->graphs[impl->n_graphs++];
    memset(g, 0, sizeof *g);
    g->key = key;
    return g;
}

static void graphs_off(cuda_impl *impl, const char *what, cudaError_t e) {
    impl->graphs_off = 1;
    (void)cudaGetLastError(); /* capture errors are not sticky */
    log_warn("cuda: step graphs off (%s: %s); decode steps run their kernels one by one", what,
             cudaGetErrorString(e));
}

int cuda_graph_begin(llmq_backend *be, uint64_t key) {
    cuda_impl *impl = cuda_impl_of(be);
    if (impl->graphs_off || be->err.code != LLMQ_OK || impl->recording) return BE_GRAPH_EAGER;
    cuda_graph *g = slot_of(impl, key);
    if (!g) return BE_GRAPH_EAGER;
    if (g->exec) {
        CUDA_TRY_RET(be, cudaGraphLaunch(g->exec, impl->stream), BE_GRAPH_REPLAYED);
        impl->graph_replays++;
        return BE_GRAPH_REPLAYED;
    }
    if (!g->warm) { /* first sight of the key: an eager warm-up step */
        g->warm = 1;
        return BE_GRAPH_EAGER;
    }
    /* Relaxed: the ops may make calls CUDA calls unsafe during a capture
     * (attribute setters); none of them enqueues work outside the stream. */
    const cudaError_t e = cudaStreamBeginCapture(impl->stream, cudaStreamCaptureModeRelaxed);
    if (e != cudaSuccess) {
        graphs_off(impl, "cudaStreamBeginCapture", e);
        return BE_GRAPH_EAGER;
    }
    impl->recording = g;
    return BE_GRAPH_RECORDING;
}

int cuda_graph_end(llmq_backend *be) {
    cuda_impl *impl = cuda_impl_of(be);
    cuda_graph *g = impl->recording;
    impl->recording = NULL;
    if (!g) return 1;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(impl->stream, &graph);
    if (e != cudaSuccess || !graph || be->err.code != LLMQ_OK) {
        /* The capture broke, or an op failed while it was recorded (perhaps
         * because of the capture): drop the recording and let the engine
         * run the step eagerly, where an op's own error shows again. */
        if (be->err.code != LLMQ_OK) log_warn("cuda: an op failed while a step graph was recorded: %s", be->err.msg);
        llmq_err_clear(&be->err);
        graphs_off(impl, "cudaStreamEndCapture", e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated);
        if (graph) cudaGraphDestroy(graph);
        return 0;
    }
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        g->exec = NULL;
        graphs_off(impl, "cudaGraphInstantiate", e);
        return 0;
    }
    impl->graphs_recorded++;
    log_debug("cuda: recorded step graph %ld (key %#llx)", impl->graphs_recorded, (unsigned long long)g->key);
    CUDA_TRY_RET(be, cudaGraphLaunch(g->exec, impl->stream), 1);
    return 1;
}

void cuda_graphs_free(cuda_impl *impl) {
    for (int i = 0; i < impl->n_graphs; i++)
        if (impl->graphs[i].exec) cudaGraphExecDestroy(impl->graphs[i].exec);
    free(impl->graphs);
    impl->graphs = NULL;
    impl->n_graphs = impl->cap_graphs = 0;
}
