from . import types_pb2 as _types_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplicationContext(_message.Message):
    __slots__ = ("name", "shim", "image", "command", "working_directory", "url", "installer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    INSTALLER_FIELD_NUMBER: _ClassVar[int]
    name: str
    shim: _types_pb2.Shim
    image: str
    command: str
    working_directory: str
    url: str
    installer: str
    def __init__(self, name: _Optional[str] = ..., shim: _Optional[_Union[_types_pb2.Shim, str]] = ..., image: _Optional[str] = ..., command: _Optional[str] = ..., working_directory: _Optional[str] = ..., url: _Optional[str] = ..., installer: _Optional[str] = ...) -> None: ...

class SessionContext(_message.Message):
    __slots__ = ("session_id", "application", "common_data")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    COMMON_DATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    application: ApplicationContext
    common_data: bytes
    def __init__(self, session_id: _Optional[str] = ..., application: _Optional[_Union[ApplicationContext, _Mapping]] = ..., common_data: _Optional[bytes] = ...) -> None: ...

class TaskContext(_message.Message):
    __slots__ = ("task_id", "session_id", "input")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    session_id: str
    input: bytes
    def __init__(self, task_id: _Optional[str] = ..., session_id: _Optional[str] = ..., input: _Optional[bytes] = ...) -> None: ...
