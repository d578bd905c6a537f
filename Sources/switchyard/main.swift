import ArgumentParser
import NIOCore
import NIOPosix

// Run Swift Concurrency on the NIO event loops instead of a separate thread pool: handlers, the HTTP server and
// the upstream client then share threads, which removes two thread hops per request (measured with bench/overhead;
// see the README). Must happen first, on the main thread. CPU-heavy work (embeddings) goes to a dedicated pool.
NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
/// In an async context the compiler picks `AsyncParsableCommand`'s asynchronous `main()`.
func runCommand() async { await Switchyard.main() }
await runCommand()
