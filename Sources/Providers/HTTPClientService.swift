public import AsyncHTTPClient
import NIOCore
public import ServiceLifecycle
public import SwitchyardCore

/// The shared upstream `HTTPClient`, owned as a `Service` so that it is shut down after the server drains.
public struct HTTPClientService: Service {
    public let client: HTTPClient

    /// One client for all providers: the pool limit per host is the largest `pool_size`, the connect timeout the
    /// shortest configured one (AsyncHTTPClient sets both per client, not per request).
    public init(providers: [ProviderConfig]) {
        var configuration = HTTPClient.Configuration()
        let connect = providers.map(\.timeouts.connect).min() ?? .seconds(10)
        // AsyncHTTPClient's deadline ends when the response head arrives; an idle-read timeout as long as the longest
        // total timeout catches a body that stalls after that (streams also check their deadline per event).
        let total = providers.map(\.timeouts.total).max() ?? .seconds(600)
        configuration.timeout = .init(connect: .nanoseconds(connect.nanoseconds), read: .nanoseconds(total.nanoseconds))
        configuration.connectionPool = .init(idleTimeout: .seconds(60),
                                             concurrentHTTP1ConnectionsPerHostSoftLimit: providers.map(\.poolSize).max() ?? 64)
        configuration.decompression = .disabled
        configuration.tracing.tracer = nil  // no tracer is bootstrapped; skip the per-request span machinery
        self.client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    public func run() async throws {
        try? await gracefulShutdown()
        try await client.shutdown()
    }
}
