import ArgumentParser
import Logging
import MockProvider
import Embeddings
import Routing
import Server
import ServiceLifecycle
import UnixSignals
import SwitchyardCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

struct Switchyard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "An AI gateway speaking the OpenAI and Anthropic APIs.",
        subcommands: [Serve.self, Mock.self, Load.self, CheckConfig.self, Models.self, Embed.self, Bench.self, Eval.self, TrainRouter.self, TrainVerifier.self],
        defaultSubcommand: Serve.self)
}

struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func makeLogger(label: String) throws -> Logger {
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown log level '\(logLevel)'") }
        LoggingSystem.bootstrap { LineLogHandler(label: $0) }  // process-wide: only here
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway. Without --config: the embedded default (in-process mock provider, no keys).")

    @Option(help: "Path to a YAML configuration file.") var config: String?
    @Option(help: "Listen address (overrides the file).") var host: String?
    @Option(help: "Listen port (overrides the file; 0 picks a free one).") var port: Int?
    @Option(help: "Latency multiplier for the built-in mock provider (1 realistic, 0 instant).") var mockLatencyScale: Double?
    @Flag(help: "Do not load the on-device embedding model (/v1/embeddings answers 503).") var noEmbeddings = false
    @Option(help: "Model cache folder (default: $SWITCHYARD_MODEL_DIR or ~/.cache/switchyard/models).") var modelDir: String?
    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = try log.makeLogger(label: "switchyard")
        var settings: GatewayConfig
        if let config {
            do {
                settings = try ConfigLoader.load(path: config)
            } catch {
                throw ValidationError("invalid configuration: \(error.description)")
            }
        } else {
            settings = .embeddedDefault()
        }
        if let host { settings.host = host }
        if let port { settings.port = port }
        if let mockLatencyScale { settings.mockLatencyScale = mockLatencyScale }
        let gateway: Gateway
        do {
            gateway = try buildGateway(config: settings, logger: logger, environment: ProcessInfo.processInfo.environment,
                                       embeddings: prepareEmbeddings())
        } catch {
            throw ValidationError("invalid configuration: a provider's tls_ca_file cannot be used: \(error)")
        }
        let host = settings.host
        let mode = config.map { "config \($0)" } ?? "embedded default: built-in mock provider, any API key accepted"
        // Unstructured: if the server never listens (port in use), the failure ends the command without waiting for it.
        let announcer = Task {
            let port = await gateway.listening.wait()
            let url = "http://\(host):\(port)"
            print("""
                Switchyard listening on \(url) (\(mode))
                Try: curl -s \(url)/v1/chat/completions -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
                """)
            fflush(nil)
        }
        defer { announcer.cancel() }
        defer { LineLogHandler.flush() }
        try await gateway.run()
    }
}

extension Serve {
    /// Fetches the embedding model on first start (it is cached afterwards); without it the gateway still serves
    /// chat, and says why embeddings are off.
    func prepareEmbeddings() -> EmbeddingsSetting {
        if noEmbeddings { return .disabled }
        let store = ModelStore(root: modelDir)
        if !store.isAvailable { print("First start: fetching the on-device embedding model (about 90 MB) for /v1/embeddings...") }
        do {
            return .model(directory: try store.pull { print($0) })
        } catch {
            print("Embeddings disabled: \(error.description)")
            return .unavailable(error.description)
        }
    }
}

struct Mock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the mock LLM provider (OpenAI and Anthropic wire formats) on its own.")

    @Option(help: "Listen address.") var host = "127.0.0.1"
    @Option(help: "Listen port (0 picks a free one).") var port = 9090
    @Option(help: "Latency multiplier (1 realistic, 0 instant).") var latencyScale = 1.0
    @Flag(help: "Accept requests without an API key.") var noAuth = false
    @Option(help: "Requests per minute per API key (429 with retry-after beyond).") var rpm: Int?
    @Option(help: "Tokens per minute per API key (prompt plus max_tokens).") var tpm: Int?
    @Option(help: "A fault's share of requests, FAULT=RATE (e.g. 429=0.05, 500=0.01, disconnect-mid-stream=0.02); repeatable.")
    var faultRate: [String] = []
    @Option(help: "Seed of the fault draws.") var seed: UInt64 = 1
    @Option(help: "Replay answer lengths from a trace: CSV with GeneratedTokens (Azure) or JSONL with output_length (Mooncake).")
    var lengthTrace: String?
    @Option(help: "Answer the GSM8K prompts of this routing data folder with their recorded answers (the weak model's for cheap models, the strong one's for expensive ones).")
    var answers: String?
    @Flag(help: "Behave as one self-hosted replica of finite capacity (continuous batching: see the README's replica model).")
    var replica = false
    @Option(help: "Replica: sequences in flight at once (the rest queue).") var replicaSequences = 8
    @Option(help: "Replica: prefill throughput, prompt tokens per second.") var replicaPrefill = 8000.0
    @Option(help: "Replica: decode throughput, output tokens per second shared by the sequences in flight.") var replicaDecode = 600.0
    @Option(help: "Replica: the most one sequence decodes, tokens per second.") var replicaSequenceRate = 60.0
    @Option(help: "Replica: requests queued beyond those in flight (503 past it).") var replicaQueue = 512
    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = try log.makeLogger(label: "switchyard-mock")
        let recorded: MockRecordedAnswers?
        do {
            recorded = try answers.map { directory throws(RoutingDataError) in try loadRecordedAnswers(directory: directory) }
        } catch {
            throw ValidationError(error.description)
        }
        var rates: [MockFault: Double] = [:]
        for entry in faultRate {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let fault = MockFault(rawValue: parts[0]), let rate = Double(parts[1]), (0...1).contains(rate) else {
                throw ValidationError("--fault-rate wants FAULT=RATE with FAULT one of "
                                      + MockFault.allCases.map(\.rawValue).joined(separator: ", ") + " and RATE in 0...1")
            }
            rates[fault] = rate
        }
        let server = MockServer(settings: MockSettings(
            host: host, port: port, latencyScale: latencyScale, requireAPIKey: !noAuth,
            limits: MockLimits(requestsPerMinute: rpm, tokensPerMinute: tpm), faultRates: rates, seed: seed,
            lengthTrace: try lengthTrace.map { path throws(MockTraceError) in try MockLengthTrace(path: path) },
            recordedAnswers: recorded,
            replica: replica ? ReplicaEngine.Settings(maxSequences: replicaSequences, prefillTokensPerSecond: replicaPrefill,
                                                      decodeTokensPerSecond: replicaDecode, sequenceTokensPerSecond: replicaSequenceRate,
                                                      maxQueue: replicaQueue) : nil))
        let host = self.host
        let service = server.makeServer(logger: logger) { port in
            print("Switchyard mock provider listening on http://\(host):\(port)")
            fflush(nil)
        }
        try await ServiceGroup(configuration: .init(services: [service], gracefulShutdownSignals: [.sigterm, .sigint],
                                                    logger: logger)).run()
        LineLogHandler.flush()
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Validate a configuration file.")

    @Argument(help: "Path to the YAML configuration file.") var file: String

    func run() throws {
        do {
            let config = try ConfigLoader.load(path: file)
            print("\(file): OK (\(config.providers.count) providers, \(config.models.count) models, \(config.keys.count) keys)")
        } catch {
            print("\(file): \(error.description)")
            throw ExitCode(1)
        }
    }
}
