import NIOConcurrencyHelpers
import Foundation
import Redis
import SwitchyardCore

/// Writes to the shared store made off the request path, a bounded number at a time: past `maximum` in flight a
/// write is dropped and counted as a failure (never queued without bound), as is one that fails.
struct BackgroundWrites: Sendable {
    let maximum: Int
    let onFailure: @Sendable () -> Void
    private let inFlight = NIOLockedValueBox(0)

    init(maximum: Int, onFailure: @escaping @Sendable () -> Void) {
        self.maximum = maximum
        self.onFailure = onFailure
    }

    /// Runs `commands` (pipelined) through `client` in the background; an error reply counts as a failure.
    func submit(_ commands: [[RedisArgument]], through client: RedisClient) {
        let admitted = inFlight.withLockedValue { count in
            guard count < maximum else { return false }
            count += 1
            return true
        }
        guard admitted else {
            onFailure()
            return
        }
        let inFlight = self.inFlight, onFailure = self.onFailure
        Task {
            do {
                let replies = try await client.pipeline(commands)
                if replies.contains(where: { if case .error = $0 { true } else { false } }) { onFailure() }
            } catch {
                onFailure()
            }
            inFlight.withLockedValue { $0 -= 1 }
        }
    }
}

/// What every shared store names and stamps the same way.
enum SharedState {
    /// Unix milliseconds now: stored times are wall-clock, since a process's clock means nothing to another.
    static func wallNow() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    /// A tenant as a Redis hash tag (`{…}` in a key): one tenant's keys share a Cluster slot, and keys carry no name.
    static func tenantTag(_ tenant: String) -> String {
        KeyHash.sha256Hex(tenant, characters: 16)
    }
}
