// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("NonisolatedNonsendingByDefault"),
]

let package = Package(
    name: "switchyard",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "switchyard", targets: ["switchyard"])
    ],
    dependencies: [
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        .target(
            name: "SwitchyardModels",
            swiftSettings: strict
        ),
        .target(
            name: "EmbeddingKernelsAVX512",
            // Only the matrix product, for CPUs with AVX-512 (chosen at run time from /proc/cpuinfo).
            swiftSettings: strict + [.unsafeFlags(["-O", "-target-cpu", "skylake-avx512"])]
        ),
        .target(
            name: "Embeddings",
            dependencies: [
                "SwitchyardModels", "SwitchyardCore", "EmbeddingKernelsAVX512",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            // Optimised even in debug builds (the forward pass is unusably slow unoptimised, and the tests run it), and
            // for AVX2/FMA (Haswell and later x86-64): SIMD16 products then compile to 256-bit FMA instructions.
            swiftSettings: strict + [.unsafeFlags(["-O", "-target-cpu", "haswell"])]
        ),
        .target(
            name: "ServerSentEvents",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strict
        ),
        .target(
            name: "SwitchyardCore",
            dependencies: [
                "SwitchyardModels", "ServerSentEvents",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Providers",
            dependencies: [
                "SwitchyardCore", "SwitchyardModels", "ServerSentEvents", "HTTPEdge", "Admission",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Caching",
            dependencies: ["SwitchyardCore", "SwitchyardModels", .product(name: "NIOCore", package: "swift-nio")],
            // The semantic cache's pair verifier (written by `switchyard train-verifier`).
            resources: [.copy("pair-verifier-v1.json")],
            swiftSettings: strict
        ),
        .target(
            name: "Routing",
            dependencies: ["SwitchyardCore", "SwitchyardModels"],
            // The classifier the embedded default's `auto` route uses (written by `switchyard train-router`).
            resources: [.copy("complexity-v1.json")],
            // Optimised even in debug builds: training fits thousands of 390-wide rows, and the tests train.
            swiftSettings: strict + [.unsafeFlags(["-O"])]
        ),
        .target(
            name: "Stages",
            dependencies: [
                "Limits", "Admission", "SwitchyardCore", "SwitchyardModels", "Caching", "Routing",
                .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        .target(
            name: "MockProvider",
            dependencies: [
                "HTTPEdge",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "HTTPEdge",
            dependencies: [
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Server",
            dependencies: [
                "SwitchyardCore", "SwitchyardModels", "ServerSentEvents", "Providers", "Stages", "MockProvider", "Embeddings",
                "HTTPEdge", "Caching", "Routing", "Redis", "Stores", "Limits", "Admission",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "LoadTest",
            dependencies: [
                "SwitchyardCore", "SwitchyardModels", "ServerSentEvents", "Providers", "MockProvider", "Routing",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "switchyard",
            dependencies: [
                "Caching", "Server", "SwitchyardCore", "SwitchyardModels", "MockProvider", "Embeddings", "Providers", "LoadTest",
                "Routing", "Redis", "Stores", "Limits", "Stages",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strict
        ),
        .target(
            // A RESP3 client over SwiftNIO: the parser state machine, pipelined connections, a pool, scripts.
            name: "Redis",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        .target(
            // The Redis implementations of the state seams.
            name: "Stores",
            dependencies: [
                "Limits", "Admission",
                "Redis", "Caching", "SwitchyardCore",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(name: "CFuzzerDriver"),
        .executableTarget(
            // libFuzzer targets for the parsers (scripts/fuzz.sh); a plain build replays inputs.
            name: "SwitchyardFuzz",
            dependencies: [
                "HTTPEdge", "SwitchyardModels", "ServerSentEvents", "CFuzzerDriver", "Redis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SwitchyardTestKit",
            dependencies: [
                "SwitchyardCore", "SwitchyardModels", "Server",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            // Deployments' resilience: retry and backoff, circuit breakers, replica balancing (pure, time passed in).
            name: "Admission",
            dependencies: ["SwitchyardCore"],
            swiftSettings: strict
        ),
        .target(
            // Rate limits: the algorithms (pure, time passed in), reserve and settle over every limit of a request.
            name: "Limits",
            dependencies: ["SwitchyardCore"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SwitchyardTests",
            dependencies: [
                "SwitchyardModels", "ServerSentEvents", "SwitchyardCore", "Stages", "Providers", "Server",
                "MockProvider", "SwitchyardTestKit", "Embeddings", "LoadTest", "HTTPEdge", "Caching", "Routing", "Redis", "Stores",
                "Limits", "Admission",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: strict
        ),
    ]
)
