// userns-run BASE COUNT -- cmd args...
// One unshare() creates a user namespace (0..COUNT-1 -> BASE..) that owns new mnt, pid, uts, ipc,
// net and cgroup namespaces; the parent (host root) writes uid_map/gid_map; the child becomes
// uid/gid 0 and forks pid 1 of the new pid namespace, which execs cmd. The launcher waits for it.
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <grp.h>
static void die(const char *m) { perror(m); exit(1); }
static void wr(const char *path, const char *s) {
    int fd = open(path, O_WRONLY); if (fd < 0) die(path);
    if (write(fd, s, strlen(s)) != (ssize_t)strlen(s)) die(path); close(fd);
}
int main(int argc, char **argv) {
    if (argc < 5 || strcmp(argv[3], "--")) { fprintf(stderr, "usage: %s BASE COUNT -- cmd...\n", argv[0]); return 2; }
    long base = atol(argv[1]), count = atol(argv[2]);
    int p1[2], p2[2]; if (pipe(p1) || pipe(p2)) die("pipe");
    pid_t c = fork(); if (c < 0) die("fork");
    if (c == 0) {
        char b;
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP)) die("unshare");
        if (write(p1[1], "x", 1) != 1) die("write");
        if (read(p2[0], &b, 1) != 1) die("read");
        close(p1[0]); close(p1[1]); close(p2[0]); close(p2[1]);
        if (setgroups(0, NULL) && 0) die("setgroups");
        if (setresgid(0, 0, 0) || setresuid(0, 0, 0)) die("setresuid");
        pid_t g = fork(); if (g < 0) die("fork2");
        if (g == 0) { execvp(argv[4], argv + 4); die("exec"); }
        int st; while (waitpid(g, &st, 0) < 0) ;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    char b, path[64], map[64];
    if (read(p1[0], &b, 1) != 1) die("read1");
    snprintf(map, sizeof map, "0 %ld %ld\n", base, count);
    snprintf(path, sizeof path, "/proc/%d/uid_map", c); wr(path, map);
    snprintf(path, sizeof path, "/proc/%d/gid_map", c); wr(path, map);
    if (write(p2[1], "x", 1) != 1) die("write2");
    int st; waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
