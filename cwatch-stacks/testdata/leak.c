/* A C program that opens one TCP connection to 127.0.0.1:<argv[1]> from a
 * known function, for the cwatch-stacks tests (built -O2 with and without
 * frame pointers, and stripped). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((noinline)) int open_leaky_connection(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) /* CONNECT */
        return -1;
    return fd;
}

__attribute__((noinline)) int worker_handle(int port) {
    int fd = open_leaky_connection(port);
    __asm__ volatile("" ::: "memory");
    return fd + 1; /* not a tail call */
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    return worker_handle(atoi(argv[1])) > 0 ? 0 : 1;
}
