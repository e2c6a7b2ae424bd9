/*
 * cli.h — the verbs of the `llmq` command.  Each verb lives in its own
 * client/cmd_<verb>.c and has the signature of a main(): argv[0] is the verb.
 * A verb returns the process exit status (0 ok, 1 runtime error, 2 usage).
 */
#ifndef LLMQ_CLI_H
#define LLMQ_CLI_H

int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_commbench(int argc, char **argv);
int cmd_vram(int argc, char **argv);
int cmd_roofline(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_submit(int argc, char **argv); /* cmd_queue.c */
int cmd_get(int argc, char **argv);
int cmd_stream(int argc, char **argv);
int cmd_cancel(int argc, char **argv);

#endif
