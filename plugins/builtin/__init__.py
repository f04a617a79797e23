"""Built-in plugins. Each module is registered with the plugin manager like a third-party plugin."""
