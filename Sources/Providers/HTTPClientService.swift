public import AsyncHTTPClient
public import NIOCore
import NIOHTTP1
public import ServiceLifecycle
public import SwitchyardCore

/// The upstream HTTP clients, owned as a `Service` so that they shut down after the server drains: the
/// loop-local client for plain-HTTP upstreams and one shared AsyncHTTPClient for HTTPS ones (TLS, HTTP/2).
public struct HTTPClientService: Service {
    public let transports: UpstreamTransports

    /// Plain-HTTP upstreams get each provider's own `pool_size` (carried by each request); the HTTPS client's limit
    /// per host is the largest `pool_size`, and both clients' connect timeout the shortest configured one.
    public init(providers: [ProviderConfig], anomalies: (any UpstreamAnomalyRecorder)? = nil) {
        let connect = providers.map(\.timeouts.connect).min() ?? .seconds(10)
        let total = providers.map(\.timeouts.total).max() ?? .seconds(600)
        let poolSize = providers.map(\.poolSize).max() ?? ProviderConfig.defaultPoolSize
        var configuration = HTTPClient.Configuration()
        // AsyncHTTPClient's deadline ends when the response head arrives; an idle-read timeout as long as the longest
        // total timeout catches a body that stalls after that (streams also check their deadline per event).
        configuration.timeout = .init(connect: .nanoseconds(connect.nanoseconds), read: .nanoseconds(total.nanoseconds))
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: poolSize)
        configuration.decompression = .disabled
        configuration.tracing.tracer = nil  // no tracer is bootstrapped; skip the per-request span machinery
        transports = UpstreamTransports(
            plain: LoopLocalHTTPClient(connectTimeout: .nanoseconds(connect.nanoseconds), connectionsPerHost: poolSize,
                                       anomalies: anomalies),
            tls: HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration))
    }

    public func run() async throws {
        try? await gracefulShutdown()
        try await transports.shutdown()
    }
}

/// Sends an upstream request with the client its scheme calls for.
public struct UpstreamTransports: Sendable {
    public let plain: LoopLocalHTTPClient
    public let tls: HTTPClient

    /// Closes both clients' connections (required before they are released).
    public func shutdown() async throws {
        await plain.shutdown()
        try await tls.shutdown()
    }

    /// - Parameters: as `LoopLocalHTTPClient.execute`; HTTPS requests use only `deadline` (AsyncHTTPClient keeps its
    ///   own pool, and its read timeout bounds a stalled body).
    public func execute(_ request: UpstreamRequest, deadline: NIODeadline, headDeadline: NIODeadline? = nil,
                        queueDeadline: NIODeadline? = nil, idleTimeout: TimeAmount? = nil, streaming: Bool,
                        maximumBodyBytes: Int) async throws -> UpstreamResponse
    {
        if !request.endpoint.tls {
            return try await plain.execute(request, deadline: deadline, headDeadline: headDeadline, queueDeadline: queueDeadline,
                                           idleTimeout: idleTimeout, streaming: streaming, maximumBodyBytes: maximumBodyBytes)
        }
        let endpoint = request.endpoint
        var outgoing = HTTPClientRequest(url: "https://\(endpoint.hostHeader)\(request.target)")
        outgoing.method = request.method
        outgoing.headers = request.headers
        outgoing.body = .bytes(request.body)
        let response: HTTPClientResponse
        do {
            response = try await tls.execute(outgoing, deadline: deadline)
            if streaming && response.status == .ok {
                return UpstreamResponse(status: response.status, headers: response.headers, body: ByteBuffer(),
                                        stream: AsyncHTTPClientBodyStream(response.body))
            }
            let body = try await response.body.collect(upTo: maximumBodyBytes)
            return UpstreamResponse(status: response.status, headers: response.headers, body: body)
        } catch let error as HTTPClientError {
            switch error {
            case .connectTimeout: throw UpstreamTransportError.connectTimeout
            case .deadlineExceeded, .readTimeout: throw UpstreamTransportError.deadlineExceeded
            case .cancelled: throw UpstreamTransportError.cancelled
            default: throw UpstreamTransportError.connectFailed("\(error)")
            }
        } catch is NIOTooManyBytesError {
            throw UpstreamTransportError.responseTooLarge
        }
    }
}

/// `@unchecked Sendable`: read by one task at a time (see `ChatStream.Source`).
final class AsyncHTTPClientBodyStream: UpstreamBodyStream, @unchecked Sendable {
    private var iterator: HTTPClientResponse.Body.AsyncIterator

    init(_ body: HTTPClientResponse.Body) { iterator = body.makeAsyncIterator() }

    func next() async throws -> ByteBuffer? {
        do {
            return try await iterator.next()
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw UpstreamTransportError.connectionClosed
        }
    }
}
