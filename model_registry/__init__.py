"""Registry of captcha models: entry format, loading and hot reload, the LiteRT runtime,
decoders, and ``Model.recognize`` — the one core that the HTTP app and the SCF adapter share.
"""
