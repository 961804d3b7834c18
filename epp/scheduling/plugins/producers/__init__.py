"""Request-lifecycle data producers: state other plugins read during a pick."""
