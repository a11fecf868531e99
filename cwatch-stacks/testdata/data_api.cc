// A C++ program shaped like the incident's SDK: Worker::handle asks
// DataApi::connect_to for a connection to 127.0.0.1:<argv[1]>.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

class DataApi {
  public:
    __attribute__((noinline)) int connect_to(const std::string &host, int port);
    std::vector<int> pool;
};

int DataApi::connect_to(const std::string &host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) // CONNECT
        return -1;
    pool.push_back(fd);
    return fd;
}

class Worker {
  public:
    __attribute__((noinline)) int handle(int port);
    DataApi api;
};

int Worker::handle(int port) {
    int fd = api.connect_to("127.0.0.1", port);
    asm volatile("" ::: "memory");
    return fd + 1;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    Worker w;
    return w.handle(std::atoi(argv[1])) > 0 ? 0 : 1;
}
