import HTTPEdge
import NIOHTTP1
import Stages
import SwitchyardCore

/// What the report endpoints (`/v1/usage`, `/v1/usage/savings`) read from a request alike: whose figures, and the
/// period.
enum ReportQuery {
    /// The tenant whose figures the caller may read: its own; with the admin key, `?tenant=NAME` or every tenant
    /// (nil).
    static func tenant(_ request: EdgeRequest, auth: AuthStage, adminKeyHash: String?) throws(GatewayError) -> String? {
        let credential = ChatHandler.credential(request)
        if let adminKeyHash, let credential, KeyHash.sha256Hex(credential) == adminKeyHash {
            return CacheAdminHandler.query(request.head.uri, "tenant")
        }
        return try auth.authenticate(credential).tenant
    }

    /// `from` and `to` (Unix seconds), by default the `defaultSpan` seconds up to `now`.
    static func period(_ request: EdgeRequest, now: Int64, defaultSpan: Int64 = 86400) throws(GatewayError) -> (from: Int64, to: Int64) {
        func bound(_ name: String) throws(GatewayError) -> Int64? {
            guard let text = CacheAdminHandler.query(request.head.uri, name) else { return nil }
            guard let value = Int64(text), unixTimeRange.contains(value) else {
                throw GatewayError(.invalidRequest, "\(name) must be Unix seconds between \(unixTimeRange.lowerBound) and "
                                   + "\(unixTimeRange.upperBound)", param: name)
            }
            return value
        }
        let to = try bound("to") ?? now
        let from = try bound("from") ?? max(0, to - defaultSpan)
        guard from <= to else { throw GatewayError(.invalidRequest, "from must not be after to", param: "from") }
        return (from, to)
    }

    /// `from` and `to`: the Unix epoch to the last second of year 9999.
    static let unixTimeRange: ClosedRange<Int64> = 0...253_402_300_799
}
