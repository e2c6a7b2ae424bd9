/*
 * cli.h — the verbs of the `llmq` command.  Each verb lives in its own
 * client/cmd_<verb>.c and has the signature of a main(): argv[0] is the verb.
 * A verb returns the process exit status (0 ok, 1 runtime error, 2 usage).
 */
#ifndef LLMQ_CLI_H
#define LLMQ_CLI_H

int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
