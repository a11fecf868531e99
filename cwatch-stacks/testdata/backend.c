/* A C program that leaks one TCP connection to 127.0.0.1:<argv[1]>, opened
 * from a known function, for cwatch's provenance kernel tests: it waits for
 * a line on stdin (the test says when the daemon watches it), connects,
 * says "connected", and never closes the socket, whatever the peer does. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((noinline)) int open_backend_connection(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) /* CONNECT */
        return -1;
    return fd;
}

__attribute__((noinline)) int handle_request(int port) {
    int fd = open_backend_connection(port);
    __asm__ volatile("" ::: "memory");
    return fd + 1; /* not a tail call */
}

int main(int argc, char **argv) {
    char go[8];
    if (argc < 2 || read(0, go, sizeof go) <= 0)
        return 2;
    if (handle_request(atoi(argv[1])) <= 0)
        return 1;
    if (write(1, "connected\n", 10) != 10)
        return 1;
    for (;;)
        pause(); /* the leak: the fd is never closed */
}
