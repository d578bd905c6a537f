/// The priority queue in front of the deployments' budgets (YAML `admission:`). A request whose deployment's budget
/// is spent waits in its deployment's queue, P0 before P1 before P2, until its priority's deadline from when it
/// arrived.
public struct AdmissionSettings: Sendable, Hashable {
    /// Requests waiting at most per deployment, all priorities together.
    public var capacity = 10_000
    /// The share of grants P2 gets while higher priorities wait too.
    public var p2Share = 0.05
    /// Per priority (`Priority.rawValue`), how long a request may wait for its budget.
    public var deadlines: [Duration] = [.seconds(10), .seconds(30), .seconds(3600)]
    /// Per tenant, its weight in the fair share between tenants of one priority (default 1).
    public var tenantWeights: [String: Double] = [:]
    /// With `state.backend: redis`, whether the instances share one queue per deployment (otherwise each keeps its
    /// own, in front of the shared budgets).
    public var shared = true

    public init() {}

    public func deadline(_ priority: Priority) -> Duration { deadlines[priority.rawValue] }
    public func weight(_ tenant: String) -> Double { tenantWeights[tenant] ?? 1 }
}

extension ConfigLoader {
    /// `admission: {capacity, p2_share, shared, deadlines: {p0_seconds, p1_seconds, p2_seconds}, tenant_weights: {tenant: weight}}`.
    static func parseAdmission(_ reader: MappingReader) throws(ConfigError) -> AdmissionSettings {
        var settings = AdmissionSettings()
        settings.capacity = try reader.int("capacity", in: 1...1_000_000) ?? settings.capacity
        settings.p2Share = try reader.double("p2_share", in: 0...1) ?? settings.p2Share
        settings.shared = try reader.bool("shared") ?? settings.shared
        if let deadlines = try reader.mapping("deadlines") {
            for priority in Priority.allCases {
                if let seconds = try deadlines.double("\(priority.name)_seconds", in: 0.001...86_400) {
                    settings.deadlines[priority.rawValue] = .nanoseconds(Int64((seconds * 1e9).rounded()))
                }
            }
            try deadlines.finish()
        }
        if let weights = try reader.mapping("tenant_weights") {
            for tenant in weights.keys {
                settings.tenantWeights[tenant] = try weights.double(tenant, in: 0.01...100)
            }
            try weights.finish()
        }
        try reader.finish()
        return settings
    }

    /// `p0`, `p1` or `p2`.
    static func parsePriority(_ reader: MappingReader, _ key: String) throws(ConfigError) -> Priority? {
        guard let text = try reader.string(key) else { return nil }
        guard let priority = Priority(name: text) else { throw ConfigError(path: reader.child(key), "must be p0, p1 or p2") }
        return priority
    }
}
